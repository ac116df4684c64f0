#!/bin/bash
# A full disk under imcd, for real: no mock.
#   - metadata: <state>/caches is a loop-mounted 32 MiB ext4 filled up with fallocate while a
#     build is under way.  The build's Failed status still reaches the disk (through a reserve
#     file), /healthz answers 503 with the reason, a create is refused with 507, a restart (after
#     SIGKILL, still full) keeps the cache Failed instead of building it again, and a change that
#     could not be written (an attachment) is written by the sweeper once there is room; then
#     /healthz is 200 and creates are accepted again;
#   - the embedded pool: refused on a 320 MiB filesystem and at --pool-size 256G on a 1 GiB one,
#     sized to the filesystem by default, and a build it is short of space for (the filesystem
#     filled beside it) fails with ENOSPC before anything is written, XFS intact.
# Needs root and loop devices.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"
. "$(dirname "$0")/../lib/registry.sh"
. "$(dirname "$0")/../lib/mkimage.sh"
. "$(dirname "$0")/../lib/imcd.sh"

need_root
need_loop
need_tool jq curl tar skopeo losetup findmnt mkfs.xfs mkfs.ext4 fallocate python3
need_programs imcd imcctl imc-attach

registry_start_or_bail

LAYOUT=$TEST_TMP/layout
# shellcheck disable=SC2317 # called through check
push_images() {
	mkimage_plain "$LAYOUT" plain 64 && registry_push_raw "$LAYOUT" plain imc/plain:v1 &&
		mkimage_plain "$LAYOUT" held 256 && registry_push_raw "$LAYOUT" held imc/held:v1
}
check "images push" push_images
HELD_LAYER=$(jq -r '.layers[0].digest' <<<"$(registry_manifest imc/held v1 2>/dev/null)")

# A registry proxy: a blob whose digest is listed in $HOLD_FILE is held back for as long as it is
# listed; one listed in $FAIL_FILE is answered 404.
HOLD_FILE=$TEST_TMP/hold
FAIL_FILE=$TEST_TMP/fail
cat >"$TEST_TMP/holdproxy.py" <<'PY'
import http.client, sys, time
from http.server import BaseHTTPRequestHandler
sys.path.insert(0, sys.argv[1])
import loopserver
upstream, hold_file, fail_file, seen_file, port_file = sys.argv[2:7]

def listed(path, name):
    try:
        with open(name) as f:
            return path.rsplit("/", 1)[-1] in f.read().split()
    except OSError:
        return False

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def forward(self):
        if "/blobs/" in self.path and listed(self.path, hold_file):
            with open(seen_file, "a") as f:
                f.write(self.path + "\n")
            while listed(self.path, hold_file):
                time.sleep(0.05)
        if "/blobs/" in self.path and listed(self.path, fail_file):
            body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"gone"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        up = http.client.HTTPConnection(upstream, timeout=60)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
        up.request(self.command, self.path, headers=hdrs)
        r = up.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        up.close()
    do_GET = do_HEAD = forward

sys.exit(loopserver.serve(H, port_file))
PY
PROXY_DIR=$TEST_TMP/proxy
mkdir -p "$PROXY_DIR"
python3 "$TEST_TMP/holdproxy.py" "$IMC_ROOT/tests/lib" "$REGISTRY" "$HOLD_FILE" "$FAIL_FILE" \
	"$PROXY_DIR/seen" "$PROXY_DIR/port" >"$PROXY_DIR/stderr" 2>&1 &
PROXY_PID=$!
# shellcheck disable=SC2317
stop_proxy() { rm -f "$HOLD_FILE"; kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }
defer stop_proxy
wait_for_file "$PROXY_DIR/port" 20 "$PROXY_PID" || bail "hold proxy starts" "$(cat "$PROXY_DIR/stderr")"
HELD=127.0.0.1:$(cat "$PROXY_DIR/port")/imc/held:v1

# wait_until SECONDS CMD...: poll CMD every 0.1 s.
# shellcheck disable=SC2317 # called through check
wait_until() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

# ---- the metadata on a small filesystem ---------------------------------------------------------
STATE=$TEST_TMP/state
META=$STATE/caches
mkdir -p "$META"
truncate -s 32M "$TEST_TMP/meta.img"
mkfs.ext4 -q -F "$TEST_TMP/meta.img" || bail "mkfs.ext4 of the metadata filesystem"
mount -o loop "$TEST_TMP/meta.img" "$META" || bail "the metadata filesystem mounts at $META"
# shellcheck disable=SC2317
umount_meta() { findmnt -rn --mountpoint "$META" >/dev/null || return 0; umount "$META" 2>/dev/null || umount -l "$META"; }
defer umount_meta
ok "state/caches is a 32 MiB ext4 of its own"

SWEEP=(--sweep-interval 0.2)
imcd_start_or_bail "$STATE" "${SWEEP[@]}"
API=$IMCD_URL/v1/imagecaches
http GET "$IMCD_URL/healthz"
check_eq "/healthz: 200 while there is room" 200 "$HTTP_STATUS"
check_eq "the metadata's reserve files are there" 4 "$(find "$META" -name '.reserve.[0-9]' | wc -l)"

READY_ID=$(create_cache "$REGISTRY/imc/plain:v1" ready) || bail "POST a cache" "$HTTP_BODY"
J=$(cache_wait "$READY_ID" 120) || bail "a cache builds" "$(imcd_log_tail 20)"
check_eq "a cache is Ready before the disk fills" Ready "$(json_get "$J" .status)"

echo "$HELD_LAYER" >"$HOLD_FILE"
HELD_ID=$(create_cache "$HELD" held) || bail "POST a cache whose layer is held back" "$HTTP_BODY"
check "its build waits for the held layer" wait_for_file "$PROXY_DIR/seen" 60

# fill DIR: take every free block of DIR's filesystem (root's reserve included), down to the
# last block (a small ext4 has 1 KiB blocks: a few KiB left would still take a small file).
fill() {
	local n=0 bs
	bs=$(stat -f -c %S "$1")
	fallocate -l "$(($(stat -f -c '%f * %S' "$1")))" "$1/filler" 2>/dev/null || true
	while head -c 1048576 /dev/zero >"$1/filler.$n" 2>/dev/null; do n=$((n + 1)); done
	while head -c "$bs" /dev/zero >"$1/filler.small.$n" 2>/dev/null; do n=$((n + 1)); done
	sync
}
fill "$META"
check_fails "the metadata filesystem is full (a 4 KiB write fails)" \
	sh -c "head -c 4096 /dev/zero >'$META/probe'"
rm -f "$META/probe"

# The held build now fails (404): its status change meets a full disk.
echo "$HELD_LAYER" >"$FAIL_FILE"
rm -f "$HOLD_FILE"
J=$(cache_wait "$HELD_ID" 60) || bail "the held build ends" "$(imcd_log_tail 20)"
check_eq "the build fails" Failed "$(json_get "$J" .status)"
# shellcheck disable=SC2317 # called through check
failed_on_disk() { [ "$(jq -r .status "$META/$HELD_ID.json" 2>/dev/null)" = Failed ]; }
check "... and Failed reaches the disk, full as it is" wait_until 10 failed_on_disk
check_match "imcd says it used a reserve file" "metadata $HELD_ID.json: out of space, the status change was written through a reserve file" \
	"$(cat "$IMCD_LOG")"
http GET "$IMCD_URL/healthz"
check_eq "/healthz: 503 while the metadata cannot be written" 503 "$HTTP_STATUS"
check_match "... with the reason" 'unavailable.*[Nn]o space left on device' "$HTTP_BODY"
http POST "$API" "$(jq -cn --arg ref "$REGISTRY/imc/plain:v1" '{name: "late", images: [{ref: $ref}]}')"
check_eq "a create is refused: 507" 507 "$HTTP_STATUS"
check_eq "... InsufficientStorage" InsufficientStorage "$(json_get "$HTTP_BODY" .error.code)"

# A restart, with the disk still full, never builds the Failed cache again.
kill -9 "$IMCD_PID"
wait "$IMCD_PID" 2>/dev/null || true
IMCD_PID=
imcd_start "$STATE" "${SWEEP[@]}" || bail "imcd starts again on a full metadata disk" "$(imcd_log_tail 30)"
API=$IMCD_URL/v1/imagecaches
http GET "$API/$HELD_ID"
check_eq "after SIGKILL and restart the failed cache is still Failed" Failed "$(json_get "$HTTP_BODY" .status)"
check_fails "... and not queued again" grep -q "cache $HELD_ID: was Creating" "$IMCD_LOG"
http GET "$IMCD_URL/healthz"
check_eq "/healthz: 503 from the start (no room for the reserve and as much again)" 503 "$HTTP_STATUS"

# A change that cannot be written is kept and retried.  The restart's clean-up and the reserve
# write above gave a few blocks back: take them again, so that the write below really meets a full
# disk.
fill "$META"
check_fails "the metadata filesystem is full again (a 4 KiB write fails)" \
	sh -c "head -c 4096 /dev/zero >'$META/probe'"
rm -f "$META/probe"
ATT=att-00112233445566ff
http POST "$API/$READY_ID/attachments" "{\"id\":\"$ATT\"}"
check_eq "an attachment is recorded (in memory) while full" 201 "$HTTP_STATUS"
check_eq "... but not on disk yet" 0 "$(jq '.attachments | length' "$META/$READY_ID.json" 2>&1)"
rm -f "$META"/filler*
# shellcheck disable=SC2317 # called through check
healthy() { http GET "$IMCD_URL/healthz" && [ "$HTTP_STATUS" = 200 ]; }
check "space returns: /healthz is 200 again" wait_until 30 healthy
check_eq "... and the attachment was written" "$ATT" \
	"$(jq -r '.attachments[0].id' "$META/$READY_ID.json" 2>&1)"
check_eq "... the reserve files are back" 4 "$(find "$META" -name '.reserve.[0-9]' | wc -l)"
http POST "$API" "$(jq -cn --arg ref "$REGISTRY/imc/plain:v1" '{name: "late", images: [{ref: $ref}]}')"
check_eq "creates are accepted again: 202" 202 "$HTTP_STATUS"
LATE_ID=$(json_get "$HTTP_BODY" .id)
J=$(cache_wait "$LATE_ID" 120) || bail "the late cache builds" "$(imcd_log_tail 20)"
check_eq "... and it builds" Ready "$(json_get "$J" .status)"

http DELETE "$API/$READY_ID/attachments/$ATT"
for id in "$READY_ID" "$HELD_ID" "$LATE_ID"; do
	http DELETE "$API/$id"
	check_eq "DELETE $id" 200 "$HTTP_STATUS"
done

# check_clean_shutdown's checks, with the metadata filesystem unmounted once imcd is gone.
PID=$IMCD_PID
rc=0
imcd_stop || rc=$?
check_eq "imcd exits 0 on SIGTERM" 0 "$rc"
check_fails "imcd log has no sanitizer report" grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG"
check "the metadata filesystem unmounts" umount_meta
check "imc-attach teardown releases the pool" imc_attach teardown
check_eq "no loop device backed by a file under the test dir" "" "$(tmp_loops_settled)"
check_eq "no mount under the test dir" "" "$(tmp_mounts)"
check_fails "imcd (pid $PID) is gone" kill -0 "$PID"

# ---- the embedded pool on a small filesystem ----------------------------------------------------
# small_fs NAME SIZE: a loop-mounted ext4 of SIZE at $TEST_TMP/NAME (unmounted at exit).
small_fs() {
	local img=$TEST_TMP/$1.img dir=$TEST_TMP/$1
	truncate -s "$2" "$img" && mkfs.ext4 -q -F "$img" && mkdir -p "$dir" && mount -o loop "$img" "$dir" &&
		defer umount_quiet "$dir"
}
# shellcheck disable=SC2317
umount_quiet() {
	findmnt -rn --mountpoint "$1" >/dev/null || return 0
	"$IMC_BIN/imc-attach" --state-dir "$1/state" teardown >/dev/null 2>&1 || true
	umount "$1" 2>/dev/null || umount -l "$1"
}
if ! small_fs tiny 320M || ! small_fs host 1G; then
	bail "a 320 MiB and a 1 GiB filesystem mount"
fi
ok "a 320 MiB and a 1 GiB ext4, loop-mounted"

# The issue's case: a pool on a filesystem too small for one is refused at once, clearly, and so
# is a pool larger than the filesystem (before: accepted, then XFS metadata I/O errors).
check_fails_with "imcd refuses an embedded pool on a 320 MiB filesystem" \
	'the filesystem of .* has [0-9]+ MiB free: an embedded pool needs 300 MiB' \
	timeout 20 "$IMC_BIN/imcd" --listen 127.0.0.1:0 --state-dir "$TEST_TMP/tiny/state" --no-config
check_eq "... and leaves no pool file" "" "$(find "$TEST_TMP/tiny" -name pool.img)"
check_fails_with "imcd refuses --pool-size 256G on a 1 GiB filesystem" \
	'pool size 262144 MiB: the filesystem of .* has [0-9]+ MiB free, so at most [0-9]+ MiB .*give a smaller --pool-size' \
	timeout 20 "$IMC_BIN/imcd" --listen 127.0.0.1:0 --state-dir "$TEST_TMP/host/state" --no-config --pool-size 256G
check_eq "... and leaves no pool file" "" "$(find "$TEST_TMP/host" -name pool.img)"

STATE=$TEST_TMP/host/state
imcd_start "$STATE" "${SWEEP[@]}" || bail "imcd starts on the 1 GiB filesystem" "$(imcd_log_tail 30)"
API=$IMCD_URL/v1/imagecaches
check_match "the default pool is sized to the filesystem, and imcd says so" \
	'repair: pool.img: sized [0-9]+ MiB, not the default 262144 MiB' "$(cat "$IMCD_LOG")"
check_match "... pool.img is no larger than its filesystem" '^yes$' \
	"$( [ "$(stat -c %s "$STATE/pool.img")" -le $((1 << 30)) ] && echo yes)"

# shellcheck disable=SC2317 # called through check
push_big() { mkimage_plain "$LAYOUT" big 256000 && registry_push_raw "$LAYOUT" big imc/big:v1; }
check "a 250 MiB image pushes" push_big
# Something else fills the filesystem beside the pool: 400 MiB are left, less than the 250 MiB
# blob and its 250 MiB of content need.
fallocate -l $(($(stat -f -c '%a * %S' "$TEST_TMP/host") - (400 << 20))) "$TEST_TMP/host/filler"
ID=$(create_cache "$REGISTRY/imc/big:v1" big) || bail "POST a cache of the 250 MiB image" "$HTTP_BODY"
J=$(cache_wait "$ID" 120) || bail "the build ends" "$(imcd_log_tail 20)"
check_eq "a build the pool is short of space for fails" Failed "$(json_get "$J" .status)"
check_match "... with ENOSPC, before anything is written" \
	'the store has [0-9]+ MiB free, the build needs [0-9]+ MiB \([0-9]+ MiB of content, [0-9]+ MiB of layers to download beside the pool\)' \
	"$(json_get "$J" .statusMessage)"
check "the pool's XFS is up (syncfs works: EIO once shut down)" sync -f "$STATE/pool"
rm -f "$TEST_TMP/host/filler"
ID2=$(create_cache "$REGISTRY/imc/big:v1" big2) || bail "POST it again" "$HTTP_BODY"
J=$(cache_wait "$ID2" 300) || bail "the build ends" "$(imcd_log_tail 20)"
check_eq "with the room back, the same build is Ready" Ready "$(json_get "$J" .status)"
for id in "$ID" "$ID2"; do
	http DELETE "$API/$id"
	check_eq "DELETE $id" 200 "$HTTP_STATUS"
done
rc=0
imcd_stop || rc=$?
check_eq "imcd exits 0 on SIGTERM" 0 "$rc"
check "imc-attach teardown releases the pool (no XFS shutdown to report)" imc_attach teardown
check_fails "imcd log has no sanitizer report" grep -Eq 'AddressSanitizer|LeakSanitizer|runtime error:' "$IMCD_LOG"
check "the small filesystems unmount" sh -c "umount '$TEST_TMP/tiny' && umount '$TEST_TMP/host'"
check_eq "no loop device backed by a file under the test dir" "" "$(tmp_loops_settled)"
check_eq "no mount under the test dir" "" "$(tmp_mounts)"

done_testing
