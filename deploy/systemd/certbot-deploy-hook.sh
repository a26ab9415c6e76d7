#!/bin/bash
# certbot deploy hook: puts a new certificate where proxyd's TLS listener reads it.
#
# certbot keeps its files readable by root only (live/ and archive/ are mode 0700, the key
# 0600), and proxyd runs as the user proxyd. So this copies the certificate and its chain
# (fullchain.pem) and the key (privkey.pem) to /etc/proxyd/tls/tls.crt and tls.key, mode
# 0640, group proxyd, which is where proxyd.yaml's `tls:` points:
#   tls_listen: 0.0.0.0:3129
#   tls:
#     certificate: /etc/proxyd/tls/tls.crt
#     key: /etc/proxyd/tls/tls.key
# Install it for the one certificate proxyd serves (certbot runs it, as root, after that
# certificate is issued and after every renewal of it):
#   install -m 0755 deploy/systemd/certbot-deploy-hook.sh /usr/local/sbin/proxyd-certbot-deploy
#   certbot certonly -d proxy.example.net --deploy-hook /usr/local/sbin/proxyd-certbot-deploy
# (In /etc/letsencrypt/renewal-hooks/deploy/ instead, certbot runs it for every certificate
# it renews: then set PROXYD_CERT_NAME below.)
#
# Each file is written under a temporary name in the same folder, then renamed over the
# old one, so proxyd never reads half a file. proxyd looks at both files every second and
# loads the new pair by itself; as belt and braces the hook then runs
# `systemctl try-reload-or-restart proxyd.service`: ExecReload's SIGHUP, which re-reads the
# config and both files, and nothing at all when proxyd isn't running. Between the two
# renames the folder holds the new key with the old certificate for an instant: should
# proxyd look just then, it refuses that pair (one ERROR line), keeps serving the old
# certificate, and loads the new pair a second later.
#
# Settings, from the environment (certbot sets RENEWED_LINEAGE; the others are for tests
# and unusual layouts):
#   RENEWED_LINEAGE   the certificate's live/ folder, e.g. /etc/letsencrypt/live/proxy.example.net
#   PROXYD_TLS_DIR    where to put tls.crt and tls.key (default /etc/proxyd/tls)
#   PROXYD_GROUP      the group that may read them: proxyd.service's Group= (default proxyd)
#   PROXYD_CERT_NAME  act only for this lineage (the live/ folder's name); default: any
#   PROXYD_RELOAD     0: do not call systemctl (default 1; a failed reload is only a warning)
set -euo pipefail

lineage=${RENEWED_LINEAGE:?"not set: certbot sets it for its deploy hooks"}
tls_dir=${PROXYD_TLS_DIR:-/etc/proxyd/tls}
group=${PROXYD_GROUP:-proxyd}
cert_name=${PROXYD_CERT_NAME:-}
reload=${PROXYD_RELOAD:-1}

if [[ -n $cert_name && $(basename "$lineage") != "$cert_name" ]]; then
    exit 0 # another certificate of this machine's: not proxyd's
fi
for file in fullchain.pem privkey.pem; do
    if [[ ! -r $lineage/$file ]]; then
        echo "proxyd deploy hook: $lineage/$file: not found or not readable" >&2
        exit 1
    fi
done

# The folder: root's, readable by the group only (it holds the key).
install -d -m 0750 -g "$group" "$tls_dir"

crt_tmp=$(mktemp "$tls_dir/.tls.crt.XXXXXX")
key_tmp=$(mktemp "$tls_dir/.tls.key.XXXXXX")
trap 'rm -f "$crt_tmp" "$key_tmp"' EXIT
install -m 0640 -g "$group" "$lineage/fullchain.pem" "$crt_tmp"
install -m 0640 -g "$group" "$lineage/privkey.pem" "$key_tmp"
mv -f "$key_tmp" "$tls_dir/tls.key"
mv -f "$crt_tmp" "$tls_dir/tls.crt"

if [[ $reload != 0 ]] && ! systemctl try-reload-or-restart proxyd.service; then
    # The files are in place: a running proxyd loads them within a second regardless.
    echo "proxyd deploy hook: systemctl reload failed; proxyd's watcher still loads $tls_dir" >&2
fi
