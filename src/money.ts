import { badRequest, type FieldError } from './errors.ts'
import type { LineInput } from './schemas/invoices.ts'

/** The largest amount every JSON client can represent exactly: 2^53 − 1 cents. */
export const MAX_AMOUNT_CENTS = BigInt(Number.MAX_SAFE_INTEGER)

export interface PricedLine extends LineInput {
  position: number
  amount_cents: number
}

/**
 * Prices invoice lines in exact integer arithmetic (BigInt: a line may reach 10^17 before the check,
 * beyond what a double holds exactly). Any line or total above 2^53 − 1 is a 400 naming the field.
 */
export function priceLines (lines: LineInput[]): { lines: PricedLine[], amount_cents: number } {
  const errors: FieldError[] = []
  let total = 0n
  const priced = lines.map((line, index) => {
    const amount = BigInt(line.quantity) * BigInt(line.unit_amount_cents)
    if (amount > MAX_AMOUNT_CENTS) {
      errors.push({ path: `body/lines/${index}`, message: `quantity × unit_amount_cents exceeds ${MAX_AMOUNT_CENTS}` })
    }
    total += amount
    return { ...line, position: index + 1, amount_cents: Number(amount) }
  })
  if (errors.length === 0 && total > MAX_AMOUNT_CENTS) {
    errors.push({ path: 'body/lines', message: `the invoice total exceeds ${MAX_AMOUNT_CENTS}` })
  }
  if (errors.length > 0) throw badRequest('an amount is too large', errors)
  return { lines: priced, amount_cents: Number(total) }
}
