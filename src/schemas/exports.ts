import { Type, type Static } from '@sinclair/typebox'
import { Page, Timestamp, Uuid } from './common.ts'

const MaybeTimestamp = (description: string) => Type.Union([Timestamp, Type.Null()], { description })
const Count = (description: string) => Type.Integer({ minimum: 0, description })

export const ExportSchema = Type.Object({
  id: Uuid,
  status: Type.Union([
    Type.Literal('queued'), Type.Literal('running'), Type.Literal('ready'), Type.Literal('failed'),
    Type.Literal('expired'),
  ], {
    description: 'queued → running → ready (downloadable until expires_at, then expired); failed when every ' +
      'attempt failed (request a new one)',
  }),
  progress: Type.Object({
    rows_done: Count('rows written so far'),
    rows_total: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], {
      description: 'rows to write, counted when the export starts (null before); the exact count once ready',
    }),
    bytes: Count('size of the file written so far, in bytes'),
    percent: Type.Integer({ minimum: 0, maximum: 100, description: '100 only once ready' }),
  }),
  error: Type.Union([Type.String(), Type.Null()], { description: 'why a failed export failed' }),
  requested_by: Type.Object({
    type: Type.String({ description: 'api_key or user' }),
    id: Type.String(),
  }),
  created_at: Timestamp,
  started_at: MaybeTimestamp('when its latest run started'),
  finished_at: MaybeTimestamp('when it became ready'),
  expires_at: MaybeTimestamp('once ready: when the file is deleted (finished_at plus the retention period); ' +
    'before: the time after which an export that has not finished is given up'),
  download_url: Type.Union([Type.String(), Type.Null()], {
    description: 'where to download the file (GET, same credentials) while it is ready; null otherwise',
  }),
}, {
  $id: 'Export',
  title: 'Export',
  description: "a copy of all the tenant's data as NDJSON, made in the background",
})
export type Export = Static<typeof ExportSchema>

export const ExportPage = Page(ExportSchema)

export const CreateExportSchema = Type.Object({}, {
  additionalProperties: false,
  description: 'no options: send `{}` or no body at all',
  examples: [{}],
})
