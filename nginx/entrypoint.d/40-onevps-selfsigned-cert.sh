#!/bin/sh
# Makes a self-signed certificate for ${DOMAIN} and *.${DOMAIN} on first start
# (kept in the nginx-certs volume). A real certificate placed there (Let's
# Encrypt) is never overwritten.
set -eu
dir=/etc/nginx/certs
domain="${DOMAIN:-localhost}"
if [ -s "$dir/fullchain.pem" ] && [ -s "$dir/privkey.pem" ]; then
    exit 0
fi
mkdir -p "$dir"
echo "$0: making a self-signed certificate for $domain and *.$domain"
umask 077  # the key is 600 from its first byte
rm -f "$dir/privkey.pem.tmp" "$dir/fullchain.pem.tmp"
openssl req -x509 -nodes -newkey rsa:2048 -days 825 \
    -subj "/CN=$domain" \
    -addext "subjectAltName=DNS:$domain,DNS:*.$domain" \
    -keyout "$dir/privkey.pem.tmp" -out "$dir/fullchain.pem.tmp" 2>/dev/null
mv "$dir/privkey.pem.tmp" "$dir/privkey.pem"
mv "$dir/fullchain.pem.tmp" "$dir/fullchain.pem"
