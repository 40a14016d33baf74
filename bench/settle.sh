# Sourced by bench runners. `settle_disk [POSTGRES_URL]` writes back what earlier steps
# left in the page cache (checkpointing PostgreSQL first when given its URL) before a
# measurement starts. Linux writes dirty pages back ~30 s after they were dirtied; a
# seed or the previous store's run (over a gigabyte) then lands in the middle of the
# next measurement, and every commit's fsync queues behind it: accept p99 86–133 ms
# instead of 24–33 ms on PostgreSQL, measured. What a measurement writes itself is
# still written back during it.
settle_disk() {
    if [ -n "${1:-}" ]; then
        psql -q "$1" -c CHECKPOINT
    fi
    sync
}
