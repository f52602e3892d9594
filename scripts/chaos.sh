#!/usr/bin/env bash
# grove chaos: SIGKILL members of a throwaway grove again and again (the
# primary mostly, sometimes a secondary, sometimes a new primary while it
# promotes) while clients write and shell tasks run; then check that no
# acknowledged write was lost or applied twice, no subscriber missed an
# event, the database is sound, no task is stuck running and no process was
# left behind. Exit 0 only if every check held.
#
#   scripts/chaos.sh                  # the short run: 20 kills (what the tests run)
#   scripts/chaos.sh --kills 200      # the long run (under a minute on 2 cores)
#   scripts/chaos.sh --duration 600 --members 6 --writers 4 --seed 42
#   scripts/chaos.sh --kills 200 --keep   # keep the workspace if a check fails
#
# Builds the release binary first with the test hooks (the `test-hooks`
# feature, which `cargo test` also turns on): they let chaos kill a primary
# exactly between COMMIT and reply.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/release/grove"

# Always asked: cargo knows whether the binary is current *and* was built
# with the feature (a plain `cargo build` leaves one without it).
(cd "$root" && cargo build --release --quiet --features test-hooks)

exec "$bin" chaos "$@"
