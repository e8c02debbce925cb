#!/usr/bin/env bash
# Makes a test CA and a server certificate for 127.0.0.1 in DIR (default
# /var/lib/rabbitmq/tidewatch-tls), for RabbitMQ's AMQPS listener in the
# tests (scripts/rabbitmq.conf names these files). Keeps existing ones.
set -euo pipefail
dir="${1:-/var/lib/rabbitmq/tidewatch-tls}"
[ -f "$dir/server.pem" ] && exit 0
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tidewatch test CA" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout server-key.pem -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
  -extfile ext.cnf -out server.pem 2>/dev/null
chmod 755 "$dir"
chmod 644 ./*.pem
