#!/usr/bin/env bash
# Build the Go example offline with Debian's packages, in GOPATH mode (Debian's Go libraries live
# in /usr/share/gocode as a GOPATH, not as modules):
#   apt-get install golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
#       golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
# The stubs are generated into a scratch GOPATH (never checked in: the proto is the one source),
# under the import path that the proto's go_package names. Usage: clients/go/build.sh [OUTPUT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/bin/expand}"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/espalier/clients/go"
protoc -I "$root/protos" --go_out="$gopath/src" --go-grpc_out="$gopath/src" "$root/protos/espalier/v1/espalier.proto"
cp -r "$here/expand" "$gopath/src/espalier/clients/go/"
cd "$gopath/src/espalier/clients/go/expand"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="${GOCACHE:-$root/.tools/go-cache}" \
    go build -o "$out" .
echo "built $out"
