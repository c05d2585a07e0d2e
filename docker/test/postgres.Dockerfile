# A stand-in for the official postgres image on machines without a registry (scripts/compose-smoke.sh builds it
# when `postgres:16` cannot be pulled): Debian's PostgreSQL 15 behind the same interface, POSTGRES_USER /
# POSTGRES_PASSWORD / POSTGRES_DB on first start, data in /var/lib/postgresql/data, pg_isready on the PATH.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY docker/test/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
CMD ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
