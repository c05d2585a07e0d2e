#!/usr/bin/env bash
# Smoke test of the CPU image: build docker/Dockerfile, run it, wait for /readyz, ingest examples/docs through the
# API, ask a question, check the cited answer, stop the container; print the image size and the build time.
# Too slow for .ci/run (the first build compiles llama.cpp: 8-15 min on 2 cores); run it by hand:
#
#   bash scripts/docker-smoke.sh
#
# Environment (all optional):
#   IMAGE=ctxqa:cpu  BASE_IMAGE=python:3.11-slim  PIP_INDEX_URL=...  TORCH_INDEX_URL=...  (build arguments)
#   WHEELS="dir ..."  wheels copied into docker/extra/wheels (pip prefers them: a cached llama-cpp-python wheel
#                     skips the compile; a local torch CPU wheel skips the download)
#   CA_BUNDLE=file    copied to docker/extra/ca.crt for pip (a TLS-inspecting proxy in front of PyPI)
#   PORT=18000        where the container listens (host networking: no bridge is needed)
#   KEEP=1            leave the container and its volume behind
#   NO_CACHE=1        build without the layer cache (a clean build time)
# Starts dockerd (vfs storage, no iptables, no bridge: what works inside an unprivileged VM) when none answers,
# and stops it again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-ctxqa:cpu}
PORT=${PORT:-18000}
NAME=ctxqa-smoke-$$
VOLUME=$NAME-data
QUESTION=${QUESTION:-How long are backups kept?}
DOCKERD_PID=""

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
    if [ -z "${KEEP:-}" ]; then
        docker rm -f "$NAME" >/dev/null 2>&1 || true
        docker volume rm "$VOLUME" >/dev/null 2>&1 || true
    fi
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started ($DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers: starting dockerd"
    dockerd --storage-driver vfs --iptables=false --bridge=none >/tmp/ctxqa-smoke-dockerd.log 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { cat /tmp/ctxqa-smoke-dockerd.log >&2; exit 1; }
fi

mkdir -p docker/extra/wheels
if [ -n "${CA_BUNDLE:-}" ]; then cp "$CA_BUNDLE" docker/extra/ca.crt; fi
for dir in ${WHEELS:-}; do find "$dir" -name '*.whl' -exec cp {} docker/extra/wheels/ \;; done

args=()
for var in BASE_IMAGE PIP_INDEX_URL TORCH_INDEX_URL LLAMA_CMAKE_ARGS; do
    if [ -n "${!var:-}" ]; then args+=(--build-arg "$var=${!var}"); fi
done
log "building $IMAGE (${args[*]:-public defaults})"
start=$(date +%s)
docker build --network host ${NO_CACHE:+--no-cache} -f docker/Dockerfile -t "$IMAGE" "${args[@]}" .
build_s=$(( $(date +%s) - start ))

log "running $IMAGE on 127.0.0.1:$PORT"
docker run -d --name "$NAME" --network host -v "$VOLUME:/data" \
    -e CTXQA_HOST=127.0.0.1 -e CTXQA_PORT="$PORT" "$IMAGE" >/dev/null
start=$(date +%s)
until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" != true ]; then docker logs "$NAME" >&2; exit 1; fi
    if [ $(( $(date +%s) - start )) -gt 600 ]; then docker logs "$NAME" >&2; log "not ready in 600 s"; exit 1; fi
    sleep 2
done
ready_s=$(( $(date +%s) - start ))
log "ready after ${ready_s}s; health: $(docker inspect -f '{{.State.Health.Status}}' "$NAME")"
KEY=$(docker exec "$NAME" ctxqa keys create --name smoke --admin | tail -n 1)
user=$(docker exec "$NAME" id -un)

files=()
for f in examples/docs/*; do files+=(-F "files=@$f"); done
curl -fsS -H "Authorization: Bearer $KEY" "${files[@]}" -F collection=handbook \
    "http://127.0.0.1:$PORT/v1/documents" >/tmp/ctxqa-smoke-upload.json
curl -fsS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d "{\"question\": \"$QUESTION\", \"collection\": \"handbook\"}" \
    "http://127.0.0.1:$PORT/v1/ask" >/tmp/ctxqa-smoke-answer.json
python3 - "$QUESTION" <<'EOF'
import json, pathlib, sys
upload = json.load(open("/tmp/ctxqa-smoke-upload.json"))
answer = json.load(open("/tmp/ctxqa-smoke-answer.json"))
names = {p.name for p in pathlib.Path("examples/docs").iterdir()}
assert {r["status"] for r in upload["results"]} == {"added"}, upload
assert {r["filename"] for r in upload["results"]} == names, upload
assert answer["answer"] and not answer["abstained"], answer
cited = [c for c in answer["citations"] if c["status"] != "unverified"]
assert cited, f"no resolved citation: {answer['citations']}"
assert all(c["source"] in names for c in cited), cited
assert answer["chunks"][0]["source"] == "backups.md", answer["chunks"][0]
print(f"Q: {sys.argv[1]}\nA: {answer['answer']}")
for c in cited:
    print(f"   [{c['status']}] {c['source']} (chunks {c['chunk_ids']})")
EOF
docker stop "$NAME" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "ok: image $IMAGE $(( size / 1000000 )) MB, build ${build_s}s, ready ${ready_s}s after start, runs as $user"
