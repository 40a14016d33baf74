# Sourced by bench runners. `settle_disk [POSTGRES_URL]` writes back what earlier steps
# left in the page cache (vacuuming and checkpointing PostgreSQL first when given its
# URL) before a measurement starts. Linux writes dirty pages back ~30 s after they were
# dirtied; a seed or the previous store's run (over a gigabyte) then lands in the
# middle of the next measurement, and every commit's fsync queues behind it: accept p99
# 86–133 ms instead of 24–33 ms on PostgreSQL, measured. What a measurement writes
# itself is still written back during it. The vacuum does now what autovacuum would
# otherwise do in the middle of a measurement after a bulk seed: mark every page just
# written all-visible (350 MB of `resource_versions` at 100,000 referrals, written out
# over 12 s), as on a server whose tables have long been vacuumed.
settle_disk() {
    if [ -n "${1:-}" ]; then
        psql -q "$1" -c "VACUUM (ANALYZE)" -c CHECKPOINT
    fi
    sync
}

# `warm_wal POSTGRES_URL` writes ~1.3 GB of WAL and checkpoints, so that PostgreSQL
# recycles its WAL segments as a server that has run for a while does, instead of
# creating a new segment file every ~0.4 s under intake load. Measured with the FHIR
# intake pair (new patient, one patient; c16): on a new server, 2 of 8 runs had
# commits stalled for 100–400 ms (p99 331/102 and 24/63 ms); with recycled segments,
# 0 of 8 (p99 19–29 ms).
warm_wal() {
    psql -q "$1" \
        -c "CREATE TABLE crossway_warm AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000000) g" \
        -c "DROP TABLE crossway_warm" -c CHECKPOINT
}

# `probed SECONDS DIR COMMAND…` runs a measurement with bench/fsync-probe.py beside it
# for SECONDS and prints "DISK OUTPUT": what the probe saw (WORST/BEYOND ms, see there),
# then the command's output. Fails when the command does.
probed() {
    local seconds="$1" dir="$2" probe output
    shift 2
    python3 bench/fsync-probe.py "$dir" "$seconds" >"$dir/fsync-probe.out" &
    probe=$!
    output="$("$@")" || { wait "$probe"; return 1; }
    wait "$probe"
    echo "$(cat "$dir/fsync-probe.out") $output"
}
