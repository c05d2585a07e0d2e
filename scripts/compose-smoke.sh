#!/usr/bin/env bash
# Smoke test of docker/compose.yaml: PostgreSQL, the one-off migration, two replicas. Uploads examples/docs through
# replica 1, searches, asks and deletes through replica 2, and checks replica 1 sees the delete; then tears the
# stack down with its volumes. Needs the CPU image (scripts/docker-smoke.sh builds it) and docker-compose (v1 or
# the v2 plugin).
#
#   bash scripts/compose-smoke.sh
#
# Environment: CTXQA_IMAGE=ctxqa:cpu, POSTGRES_IMAGE=postgres:16 (when it can be neither found nor pulled, a
# stand-in is built from docker/test/postgres.Dockerfile on BASE_IMAGE), CTXQA_PORT_1=18001, CTXQA_PORT_2=18002.
set -euo pipefail
cd "$(dirname "$0")/.."
export CTXQA_IMAGE=${CTXQA_IMAGE:-ctxqa:cpu}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:16}
export CTXQA_PORT_1=${CTXQA_PORT_1:-18001} CTXQA_PORT_2=${CTXQA_PORT_2:-18002}
PROJECT=ctxqa-smoke-$$
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
COMPOSE+=(-f docker/compose.yaml -p "$PROJECT")
created=()

log() { printf '== %s\n' "$*" >&2; }
cleanup() {
    "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true
    for f in "${created[@]}"; do rm -f "$f"; done
}
trap cleanup EXIT

docker image inspect "$CTXQA_IMAGE" >/dev/null || { log "build $CTXQA_IMAGE first (scripts/docker-smoke.sh)"; exit 1; }
if ! docker image inspect "$POSTGRES_IMAGE" >/dev/null 2>&1 && ! docker pull "$POSTGRES_IMAGE" >/dev/null 2>&1; then
    log "$POSTGRES_IMAGE cannot be pulled here: building the stand-in docker/test/postgres.Dockerfile"
    docker build --network host -f docker/test/postgres.Dockerfile ${BASE_IMAGE:+--build-arg BASE_IMAGE=$BASE_IMAGE} \
        -t ctxqa-test-postgres . >/dev/null
    export POSTGRES_IMAGE=ctxqa-test-postgres
fi
# Secrets through the env files compose.yaml names; made here only when absent (and removed again).
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
if [ ! -f docker/postgres.env ]; then
    sed "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$password/" docker/postgres.env.example >docker/postgres.env
    created+=(docker/postgres.env)
fi
if [ ! -f docker/ctxqa.env ]; then
    pw=$(sed -n 's/^POSTGRES_PASSWORD=//p' docker/postgres.env)
    sed "s/change-me/$pw/" docker/ctxqa.env.example >docker/ctxqa.env
    created+=(docker/ctxqa.env)
fi

log "up: $POSTGRES_IMAGE + migrate + 2 x $CTXQA_IMAGE"
"${COMPOSE[@]}" up -d
start=$(date +%s)
for svc in api-1 api-2; do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q "$svc")" 2>/dev/null)" = healthy ]; do
        if [ $(( $(date +%s) - start )) -gt 900 ]; then "${COMPOSE[@]}" logs >&2; log "$svc not healthy"; exit 1; fi
        sleep 3
    done
done
log "both replicas healthy after $(( $(date +%s) - start ))s"
migrate=$(docker inspect -f '{{.State.ExitCode}} {{.State.Status}}' "$("${COMPOSE[@]}" ps -q migrate)")
[ "$migrate" = "0 exited" ] || { log "migrate: $migrate"; exit 1; }
"${COMPOSE[@]}" logs migrate | grep -q '→' || { "${COMPOSE[@]}" logs migrate >&2; exit 1; }
if "${COMPOSE[@]}" logs migrate | grep -qF "$(sed -n 's/^POSTGRES_PASSWORD=//p' docker/postgres.env)"; then
    log "the migration log shows the database password"; exit 1
fi

KEY=$("${COMPOSE[@]}" exec -T api-1 ctxqa keys create --name smoke --admin | tail -n 1 | tr -d '\r')
A=http://127.0.0.1:$CTXQA_PORT_1 B=http://127.0.0.1:$CTXQA_PORT_2
auth=(-H "Authorization: Bearer $KEY")
files=()
for f in examples/docs/*; do files+=(-F "files=@$f"); done
curl -fsS "${auth[@]}" "${files[@]}" -F collection=handbook "$A/v1/documents" >/tmp/compose-smoke-upload.json
curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d '{"query": "how long are snapshots kept", "collection": "handbook"}' \
    "$B/v1/search" >/tmp/compose-smoke-search.json
curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d '{"question": "How long are backups kept?", "collection": "handbook"}' \
    "$B/v1/ask" >/tmp/compose-smoke-answer.json
doc=$(python3 - <<'EOF'
import json
up = json.load(open("/tmp/compose-smoke-upload.json"))
hits = json.load(open("/tmp/compose-smoke-search.json"))["hits"]
ans = json.load(open("/tmp/compose-smoke-answer.json"))
ids = {r["filename"]: r["document_id"] for r in up["results"] if r["status"] == "added"}
assert len(ids) == len(up["results"]) == 3, up
assert hits and hits[0]["document_id"] == ids["backups.md"], hits[:1]   # uploaded through 1, found through 2
assert ans["answer"] and ans["chunks"][0]["source"] == "backups.md", ans
print(ids["backups.md"])
EOF
)
curl -fsS -X DELETE "${auth[@]}" "$B/v1/documents/$doc" >/dev/null
code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "$A/v1/documents/$doc")
[ "$code" = 404 ] || { log "deleted through 2, still there through 1 ($code)"; exit 1; }
curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d '{"query": "how long are snapshots kept", "collection": "handbook"}' \
    "$A/v1/search" | python3 -c "import json, sys; assert all(h['document_id'] != $doc for h in json.load(sys.stdin)['hits'])"
for svc in api-1 api-2; do
    "${COMPOSE[@]}" exec -T "$svc" ctxqa doctor >/dev/null || { log "$svc: doctor found problems"; exit 1; }
done
log "ok: migrate ran once and exited 0; upload via api-1 -> search/ask via api-2; delete via api-2 -> gone on api-1; doctor clean on both"
