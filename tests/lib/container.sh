# shellcheck shell=bash disable=SC2034 # globals here are read by the scripts that source this
# Run an OCI container from a prepared rootfs with crun or runc.  Needs common.sh.
#
#   run_container ROOTFS CMD...   sets CONTAINER_OUTPUT to the container's output,
#                                 CONTAINER_RUNTIME to the runtime that worked ("crun" or
#                                 "runc") and CONTAINER_ERRORS to what the ones that failed said.
#                                 Call it directly, not in $(...), or the variables are lost.
#
# crun 1.8 on this kind of host (hybrid cgroups: v1 controllers plus a cgroup2 mount at
# /sys/fs/cgroup/unified) needs that cgroup2 mount out of its way: it runs in a private mount
# namespace where /sys/fs/cgroup/unified is unmounted.  The host's cgroups are never changed.
# runc 1.1 works as is.  IMC_RUNTIME=crun|runc picks one.

CONTAINER_RUNTIME=
CONTAINER_ERRORS=
CONTAINER_OUTPUT=

# _bundle ROOTFS DIR CMD...: write DIR/config.json for ROOTFS running CMD.
_bundle() {
	local rootfs=$1 dir=$2 gen args
	shift 2
	mkdir -p "$dir"
	if command -v crun >/dev/null 2>&1; then
		gen=crun
	else
		gen=runc
	fi
	(cd "$dir" && rm -f config.json && "$gen" spec >/dev/null)
	args=$(printf '%s\n' "$@" | jq -R . | jq -cs .)
	jq --arg root "$(cd "$rootfs" && pwd -P)" --argjson args "$args" \
		'.root.path = $root | .root.readonly = false | .process.terminal = false
		 | .process.args = $args | .hostname = "imcache-test"' \
		"$dir/config.json" >"$dir/config.json.new"
	mv -f "$dir/config.json.new" "$dir/config.json"
}

_run_crun() {
	local bundle=$1 id=$2
	# shellcheck disable=SC2016 # expanded by the inner shell
	timeout 60 unshare -m --propagation private sh -c \
		'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run --bundle "$1" "$2"' \
		sh "$bundle" "$id" </dev/null
}

_run_runc() {
	local bundle=$1 id=$2
	timeout 60 runc run --bundle "$bundle" "$id" </dev/null
}

run_container() {
	local rootfs=$1 bundle id rt out rc runtimes
	shift
	bundle=$(mktemp -d "$TEST_TMP/bundle.XXXXXX")
	_bundle "$rootfs" "$bundle" "$@"
	CONTAINER_RUNTIME=
	CONTAINER_ERRORS=
	CONTAINER_OUTPUT=
	if [ -n "${IMC_RUNTIME:-}" ]; then
		runtimes=$IMC_RUNTIME
	else
		runtimes="crun runc"
	fi
	for rt in $runtimes; do
		command -v "$rt" >/dev/null 2>&1 || {
			CONTAINER_ERRORS+="$rt: not installed"$'\n'
			continue
		}
		id=imc-test-$$-$RANDOM
		rc=0
		out=$("_run_$rt" "$bundle" "$id" 2>&1) || rc=$?
		# Whatever happened, the runtime must not keep state for this id.
		"$rt" delete --force "$id" >/dev/null 2>&1 || true
		if [ "$rc" -eq 0 ]; then
			CONTAINER_RUNTIME=$rt
			rm -rf "$bundle"
			CONTAINER_OUTPUT=$out
			return 0
		fi
		CONTAINER_ERRORS+="$rt (exit $rc): $out"$'\n'
	done
	rm -rf "$bundle"
	return 1
}

# mkimage_config_probe DIR TAG: (needs mkimage.sh) a busybox image whose config names everything
# imc-runtime's imcache.io/use-image-config takes: Env, Entrypoint + Cmd, WorkingDir (/work,
# holding "hello") and User ("user", uid 1000 gid 1000 in its /etc/passwd).  Run with its own
# config it prints "from-image /work 1000:1000 from-work".
CONFIG_PROBE_OUTPUT="from-image /work 1000:1000 from-work"
mkimage_config_probe() {
	local dir=$1 tag=$2 work l1 m cfg
	work=$(mktemp -d "$TEST_TMP/mk.XXXXXX")
	[ -e "$dir/oci-layout" ] || mk_layout "$dir"
	mkimage_busybox_rootfs "$work/l1"
	mkdir -p "$work/l1/work"
	printf 'from-work\n' >"$work/l1/work/hello"
	l1=$(mk_layer "$dir" "$work/l1" gzip)
	# shellcheck disable=SC2016 # expanded in the container
	cfg=$(jq -cn --arg cmd 'echo "$IMC_TEST $(pwd) $(id -u):$(id -g) $(cat hello)"' \
		'{Env: ["PATH=/bin", "IMC_TEST=from-image"], Entrypoint: ["/bin/sh", "-c"],
		  Cmd: [$cmd], WorkingDir: "/work", User: "user"}')
	m=$(mk_image "$dir" amd64 "$cfg" "$l1")
	mk_tag "$dir" "$tag" "$m"
	rm -rf "$work"
}

# attach_count: how many attaches imc-attach lists in $IMC_STATE (imcd.sh's imc_attach).
attach_count() {
	imc_attach list 2>&1 | jq length 2>&1
}

# container_gone WHAT ROOTFS CONTAINER_ID: three checks after an imc-runtime container is gone:
# no attach left, no mount at ROOTFS, no runtime record in $STATE/runtime.
container_gone() {
	local what=$1 rootfs=$2 cid=$3
	check_eq "$what: imc-attach list is empty" 0 "$(attach_count)"
	check_fails "$what: no mount at the rootfs dir" findmnt -rn --mountpoint "$rootfs"
	check_fails "$what: no runtime record left" test -e "$STATE/runtime/$cid.json"
}
