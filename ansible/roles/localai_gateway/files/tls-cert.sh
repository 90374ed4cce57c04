#!/bin/sh
# localai-tls-cert DIR NAME...: the gateway's HTTPS certificate from a private CA of this host.
#
#   DIR/ca.pem        the CA's certificate: what clients trust (copy it to them; nothing secret)
#   DIR/ca.key        the CA's key (root only); made once, kept
#   DIR/gateway.pem   this host's certificate for NAME... (DNS names and IP addresses), signed by the CA
#   DIR/gateway.key   its key
#
# Idempotent: the CA is made once; the host's certificate again only when the names change or it
# is within 30 days of expiring (825 days, the most Apple's clients accept). Prints CHANGED when it
# wrote anything. The localai_gateway role runs it (localai_tls: auto or true); so may an admin.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 DIR NAME..." >&2; exit 2; }
dir=$1
shift
umask 077
mkdir -p "$dir"
changed=

if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
        -subj "/CN=localai private CA ($(uname -n))" -keyout "$dir/ca.key.new" -out "$dir/ca.pem.new" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
    chmod 0644 "$dir/ca.pem.new"
    mv "$dir/ca.key.new" "$dir/ca.key"
    mv "$dir/ca.pem.new" "$dir/ca.pem"
    changed=1
fi

# subjectAltName: an address as IP:, anything else as DNS:; sorted, each once.
san=$(for name in "$@"; do
    case $name in
        *:* | *[!0-9.]* ) case $name in *:*) echo "IP:$name" ;; *) echo "DNS:$name" ;; esac ;;
        *) echo "IP:$name" ;;
    esac
done | sort -u | paste -sd, -)

if [ -n "$changed" ] || [ ! -s "$dir/gateway.pem" ] || [ ! -s "$dir/gateway.key" ] \
    || [ "$(cat "$dir/gateway.names" 2>/dev/null)" != "$san" ] \
    || ! openssl x509 -checkend 2592000 -noout -in "$dir/gateway.pem" >/dev/null 2>&1; then
    ext="$dir/gateway.ext"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" \
        "subjectAltName=$san" >"$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -subj "/CN=$1" \
        -keyout "$dir/gateway.key.new" -out "$dir/gateway.csr" 2>/dev/null
    openssl x509 -req -in "$dir/gateway.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 -extfile "$ext" \
        -out "$dir/gateway.pem.new" 2>/dev/null
    chmod 0644 "$dir/gateway.pem.new"
    rm -f "$dir/gateway.csr" "$ext"
    mv "$dir/gateway.key.new" "$dir/gateway.key"
    mv "$dir/gateway.pem.new" "$dir/gateway.pem"
    printf '%s\n' "$san" >"$dir/gateway.names"
    changed=1
fi
[ -z "$changed" ] || echo CHANGED
