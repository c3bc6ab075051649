# Prefect settings of this checkout's local server; source it, do not run it:
#   source scripts/prefect-env.sh && prefect deployment run build-dataset/demo --watch
# PREFECT_HOME stays in the project (.prefect/, git-ignored), the server listens on loopback
# only, analytics are off, and the CLI talks to that server: without PREFECT_API_URL, Prefect
# silently starts a separate temporary server that knows none of the deployments.
# PORT (default 4200) picks the server's port; .venv/bin goes first on PATH for `prefect`.
_uir_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export PREFECT_HOME="$_uir_root/.prefect"
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_SERVER_API_PORT="${PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_SERVER_API_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
[ -d "$_uir_root/.venv/bin" ] && case ":$PATH:" in
    *":$_uir_root/.venv/bin:"*) ;;
    *) export PATH="$_uir_root/.venv/bin:$PATH" ;;
esac
unset _uir_root
