#!/bin/sh
# Entry point of the TuFT image. It works outside Docker too (tests/test_docker.py runs it).
#
#   (no arguments)  the quick start: `tuft --port $PORT`; the built-in model and a dev key in $TUFT_HOME
#   -…              options for tuft, e.g. `--port 9000`
#   tuft …          the server with your arguments, e.g. the original TuFT README's
#                   tuft --port 8080 --checkpoint-dir /data/checkpoints --model-config /data/models.yaml
#   worker …        a distributed worker (manage.py tuft_worker …)
#   init            first-run setup (built-in model if no models.yaml, migrations, dev key), then exit
#   manage …        any management command: create_tenant NAME, createsuperuser, …
#   anything else   run as a command
set -eu
APP_DIR=$(cd "$(dirname "$0")/.." && pwd)

if [ "$#" -eq 0 ]; then
    set -- tuft --port "${PORT:-8080}"
fi
case "$1" in
    -*) set -- tuft "$@" ;;
esac
case "$1" in
    worker) shift; exec python "$APP_DIR/manage.py" tuft_worker "$@" ;;
    init) exec python "$APP_DIR/manage.py" quickstart ;;
    manage) shift; exec python "$APP_DIR/manage.py" "$@" ;;
    *) exec "$@" ;;
esac
