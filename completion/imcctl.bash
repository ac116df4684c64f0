# bash completion for imcctl(1); make install puts it in
# $(PREFIX)/share/bash-completion/completions/imcctl, or source it from ~/.bashrc.
#
# Commands, flags and the values of flags come from "imcctl --help" itself (of the imcctl being
# completed), so the completion follows the binary: a command is a line "  NAME ..." of the help,
# its flags are the flags on that line and on the indented lines under it, the global flags are
# those of the "usage:" lines, and a flag followed by lowercase words such as "json" or
# "exact|best" takes those words as its values.  Needs nothing but bash.

# The help of the imcctl in $1, read once per binary.
_imcctl_help() {
	if [ "${_imcctl_help_of-}" != "$1" ]; then
		_imcctl_help_text=$("$1" --help 2>/dev/null)
		_imcctl_help_of=$1
	fi
	printf '%s\n' "$_imcctl_help_text"
}

# The commands of the help on stdin.
_imcctl_commands() {
	sed -n 's/^  \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p'
}

# The lines of the help on stdin that belong to command $1 (all "usage:" lines when $1 is empty).
_imcctl_section() {
	awk -v cmd="$1" '
		cmd == "" { if ($0 ~ /^usage:/ || (u && $0 ~ /^       [a-z]/)) { u = 1; print } else u = 0; next }
		/^  [a-z]/ { split($0, w, " "); inside = w[1] == cmd }
		/^$/ { inside = 0 }
		inside { print }'
}

# The flags in the text on stdin, one a line.
_imcctl_flags() {
	grep -oE '(^|[^A-Za-z0-9_-])--?[A-Za-z][A-Za-z0-9-]*' | sed 's/^[^-]*//' | sort -u
}

# The values of flag $1 in the text on stdin ("exact best" for "--match exact|best").
_imcctl_values() {
	grep -oE -- "(^|[^A-Za-z0-9_-])$1 [a-z][a-z|]*([] ]|$)" | head -n1 |
		sed -E "s/^.*$1 //; s/[] ]\$//; s/\\|/ /g"
}

_imcctl() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev='' bin=${COMP_WORDS[0]} cmd='' i w help section words
	[ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD - 1]}
	help=$(_imcctl_help "$bin")
	# The command is the first word that is neither a flag nor a global flag's value.
	for ((i = 1; i < COMP_CWORD; i++)); do
		w=${COMP_WORDS[i]}
		case "$w" in
		--server | --token) i=$((i + 1)) ;;
		-*) ;;
		*)
			cmd=$w
			break
			;;
		esac
	done
	section=$(_imcctl_section "$cmd" <<<"$help")
	COMPREPLY=()
	case "$prev" in
	-*)
		words=$(_imcctl_values "$prev" <<<"$section")
		if [ -n "$words" ]; then
			mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
			return 0
		fi
		# A flag with an upper-case placeholder (--server URL, --name N) takes a free value.
		if grep -qE -- "(^|[^A-Za-z0-9_-])$prev [A-Z<]" <<<"$section"; then
			return 0
		fi
		;;
	esac
	if [[ $cur == -* ]]; then
		words=$(_imcctl_flags <<<"$section")
	elif [ -z "$cmd" ]; then
		words=$(_imcctl_commands <<<"$help")
	else
		return 0
	fi
	mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")
}

complete -F _imcctl imcctl
