#!/bin/bash
# imcctl's bash completion (completion/imcctl.bash), sourced in a bash of its own and asked the
# way readline asks (COMP_WORDS, COMP_CWORD, then the function "complete -p imcctl" names).
# What it must offer is derived from "imcctl --help" here too, and checked against the binary:
# every command it completes is one imcctl runs (not "unknown command"), every flag it completes
# for create is one "imcctl create" accepts (not "bad option").
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"

need_programs imcctl
COMPLETION=$IMC_ROOT/completion/imcctl.bash
IMCCTL=$IMC_BIN/imcctl
# Nothing listens here: a command that gets as far as a request fails to connect, quickly.
DEAD=http://127.0.0.1:9

# complete WORD...: what the completion offers for the command line WORD... (the last word is
# the one being completed), one a line, sorted.
complete_words() {
	bash --norc --noprofile -c '
		. "$1"
		shift
		spec=$(complete -p imcctl) || exit 1
		fn=${spec#*-F }
		fn=${fn%% *}
		COMP_WORDS=("$@")
		COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
		COMP_LINE="$*"
		COMP_POINT=${#COMP_LINE}
		"$fn" imcctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
		printf "%s\n" "${COMPREPLY[@]}"' _ "$COMPLETION" "$@" | sed '/^$/d' | sort
}

HELP=$("$IMCCTL" --help)
# shellcheck disable=SC2016 # $1 is the inner bash's
check "the completion is registered for imcctl" \
	bash --norc --noprofile -c '. "$1" && complete -p imcctl | grep -q -- "-F "' _ "$COMPLETION"

# --- commands --------------------------------------------------------------------------------------

# The commands of the help: its lines "  NAME ...".
want=$(sed -n 's/^  \([a-z][a-z-]*\).*/\1/p' <<<"$HELP" | sort -u)
got=$(complete_words "$IMCCTL" "")
check_match "imcctl --help lists commands" . "$want"
check_eq "completing 'imcctl ' lists the commands of imcctl --help" "$want" "$got"
for cmd in $got; do
	rc=0
	out=$("$IMCCTL" --server "$DEAD" "$cmd" 2>&1) || rc=$?
	if grep -q 'unknown command' <<<"$out"; then
		not_ok "imcctl runs the completed command '$cmd'" "$out"
	else
		ok "imcctl runs the completed command '$cmd' (exit $rc)"
	fi
done
check_eq "completing 'imcctl cr' gives create" create "$(complete_words "$IMCCTL" cr)"

# --- flags ---------------------------------------------------------------------------------------

flags_of() { grep -oE '(^|[^A-Za-z0-9_-])--[A-Za-z][A-Za-z0-9-]*' | sed 's/^[^-]*//' | sort -u; }
# create's entry of the help: its line and the indented lines under it.
create_help=$(awk '/^  [a-z]/ { split($0, w, " "); inside = w[1] == "create" } /^$/ { inside = 0 } inside' <<<"$HELP")
want=$(flags_of <<<"$create_help")
got=$(complete_words "$IMCCTL" create --)
check_match "imcctl --help lists flags of create" -- "--" "$want"
check_eq "completing 'imcctl create --' lists create's flags of imcctl --help" "$want" "$got"
for flag in $got; do
	rc=0
	out=$("$IMCCTL" --server "$DEAD" create "$flag" 1 example.com/x:1 2>&1) || rc=$?
	if grep -qE 'bad option|unknown option|unrecognized' <<<"$out"; then
		not_ok "imcctl create accepts the completed flag $flag" "$out"
	else
		ok "imcctl create accepts the completed flag $flag (exit $rc)"
	fi
done
check_eq "completing 'imcctl create --wa' gives --wait" --wait "$(complete_words "$IMCCTL" create --wa)"
# The usage lines: "usage: imcctl ..." and the lines "       imcctl ..." under it.
usage_lines=$(awk '/^usage:/ { u = 1; print; next } u && /^ +imcctl / { print; next } { u = 0 }' <<<"$HELP")
check_eq "global flags before the command: those of the usage lines" \
	"$(flags_of <<<"$usage_lines")" "$(complete_words "$IMCCTL" --)"
check_eq "after --server URL the command is still completed" "$(complete_words "$IMCCTL" "")" \
	"$(complete_words "$IMCCTL" --server "$DEAD" "")"

# --- values ----------------------------------------------------------------------------------------

match_values=$(grep -oE -- '--match [a-z|]+' <<<"$HELP" | head -n1 | sed 's/^--match //' | tr '|' '\n' | sort)
check_match "imcctl --help gives the values of list --match" . "$match_values"
check_eq "completing 'imcctl list --match ' gives them" "$match_values" \
	"$(complete_words "$IMCCTL" list --match "")"
check_eq "completing 'imcctl get ID -o ' gives json" json "$(complete_words "$IMCCTL" get imc-x -o "")"
check_eq "a free value (--name N) completes to nothing" "" "$(complete_words "$IMCCTL" create --name "")"

done_testing
