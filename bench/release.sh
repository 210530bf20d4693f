# bench/release.sh — sourced by the benchmarks (after ROOT and `log` are
# set): `release_build BIN PACKAGE…` builds ferry and the named plugin
# packages in release unless BIN and every package's component are there.
release_build() {
    local bin=$1 package missing=0
    shift
    [[ -x $bin ]] || missing=1
    for package in "$@"; do
        [[ -f $ROOT/plugins/target/wasm32-wasip2/release/${package//-/_}.wasm ]] || missing=1
    done
    ((missing)) || return 0
    log "building ferry and the plugins (release)"
    rustup target add wasm32-wasip2 >/dev/null
    local args=()
    for package in "$@"; do args+=(-p "$package"); done
    (cd "$ROOT/plugins" && cargo build --release --quiet --target wasm32-wasip2 "${args[@]}")
    (cd "$ROOT" && cargo build --release --quiet -p ferry)
}
