#!/bin/bash
# Run inside the stand-in's debootstrap'd root (chroot), as scripts/docker-deps.sh does: what
# the official postgres image installs, from Debian's packages. The postgres user comes first,
# with uid/gid 999, so the package keeps it; no "main" cluster (the entrypoint makes one in
# PGDATA); the locale en_US.UTF-8; listen_addresses '*' in the sample config.
set -euo pipefail
PG_MAJOR=$1
export DEBIAN_FRONTEND=noninteractive
groupadd -r postgres --gid=999
useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres
install -d -o postgres -g postgres /var/lib/postgresql
apt-get update -qq
apt-get install -y -qq --no-install-recommends locales postgresql-common >/dev/null
localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8
sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf
apt-get install -y -qq --no-install-recommends "postgresql-$PG_MAJOR" >/dev/null
sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" \
    "/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample"
install -d -o postgres -g postgres -m 3777 /var/run/postgresql
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
