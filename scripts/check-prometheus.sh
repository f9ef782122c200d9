#!/usr/bin/env bash
# Checks observe's Prometheus files: the scrape config, the alerting rules, and the rules' unit
# tests (config/prometheus/alerts.test.yml). promtool comes with Debian's `prometheus` package,
# which `scripts/services.sh tools` installs as root; without it the checks are skipped, said
# so on stderr, and the script succeeds (a developer machine without promtool can still run
# the rest of the tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v promtool >/dev/null 2>&1; then
  echo "check-prometheus.sh: promtool is not installed: skipping the checks of config/prometheus/ (install Debian's prometheus package, or run scripts/services.sh tools as root)" >&2
  exit 0
fi

promtool check config config/prometheus/prometheus.yml
promtool check rules config/prometheus/alerts.yml
promtool test rules config/prometheus/alerts.test.yml
