# Sourced by bench runners. `bench_token ENV…` registers an EHR client (the demo key in
# config/demo) on the store that the environment assignments name, and prints an access
# token for it, minted by `crossway clients token`. Needs BIN.
bench_token() {
    local id
    id="$(env "$@" "$BIN/crossway" clients add ehr --jwks config/demo/ehr-jwks.json --json \
        --config config/default.toml | python3 -c 'import json,sys; print(json.load(sys.stdin)["client_id"])')"
    env "$@" "$BIN/crossway" clients token "$id" --config config/default.toml
}
