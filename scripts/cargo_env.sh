# Sourced by the scripts (from the repository's root): $target is cargo's target
# directory as cargo itself resolves it (CARGO_TARGET_DIR, build.target-dir in a
# .cargo/config.toml, else ./target), and `build ARGS` runs `cargo build ARGS`
# showing cargo's progress, after a line saying what is built and that a first
# build takes minutes.
target=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target=${target:-${CARGO_TARGET_DIR:-$PWD/target}}
build() {
  echo "== cargo build $* (into $target; a first build takes several minutes)" >&2
  cargo build "$@"
}
