#!/usr/bin/env bash
# Blue-green switch: point the live Service hitcount-aggregator at COLOUR's aggregators.
#
#   infra/k8s/switch-colour.sh COLOUR [--namespace NS] [--print]
#
# COLOUR is blue or green; NS defaults to hitcount. It refuses to switch unless COLOUR's
# Deployment has rolled out (its pods are ready, so /readyz answers) and the migration Job
# hitcount-migrate has completed with COLOUR's image: the new release must not serve on a schema
# it has not migrated. The other colour keeps running, for rollback (run this again with it).
# --print prints the kubectl commands instead of running them (no cluster needed).
set -euo pipefail

usage() { echo "usage: $0 blue|green [--namespace NS] [--print]" >&2; exit 2; }

colour=""
namespace=hitcount
print=false
while [ "$#" -gt 0 ]; do
  case "$1" in
    --namespace) [ "$#" -ge 2 ] || usage; namespace=$2; shift 2 ;;
    --namespace=*) namespace=${1#--namespace=}; shift ;;
    --print|--dry-run) print=true; shift ;;
    blue|green) [ -z "$colour" ] || usage; colour=$1; shift ;;
    *) usage ;;
  esac
done
[ -n "$colour" ] || usage

# Runs a command, or with --print shows it, quoting what the shell would need quoted.
run() {
  if [ "$print" = true ]; then
    local out="" arg
    for arg in "$@"; do
      if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+="$arg "; else out+="'$arg' "; fi
    done
    echo "${out% }"
  else
    "$@"
  fi
}

k=(kubectl --namespace "$namespace")
deployment=deployment/hitcount-aggregator-$colour
image_path='{.spec.template.spec.containers[0].image}'

# 1. The new colour is rolled out: every replica ready.
run "${k[@]}" rollout status "$deployment" --timeout=10m
# 2. The migrations ran to completion (kubectl wait fails on timeout or a missing Job).
run "${k[@]}" wait --for=condition=complete job/hitcount-migrate --timeout=10m
# 3. ... and with this colour's image, not last release's.
if [ "$print" = true ]; then
  run "${k[@]}" get "$deployment" -o "jsonpath=$image_path"
  run "${k[@]}" get job/hitcount-migrate -o "jsonpath=$image_path"
else
  deployed=$("${k[@]}" get "$deployment" -o "jsonpath=$image_path")
  migrated=$("${k[@]}" get job/hitcount-migrate -o "jsonpath=$image_path")
  if [ "$deployed" != "$migrated" ]; then
    echo "$0: $deployment runs $deployed but job/hitcount-migrate ran $migrated: run the migration Job of this release first" >&2
    exit 1
  fi
fi
# 4. The switch: a merge patch replaces the colour and keeps the rest of the selector.
run "${k[@]}" patch service hitcount-aggregator --type merge \
  -p "{\"spec\":{\"selector\":{\"hitcount.dev/colour\":\"$colour\"}}}"

if [ "$print" = false ]; then
  echo "service/hitcount-aggregator in namespace $namespace now selects colour $colour ($deployed)"
fi
