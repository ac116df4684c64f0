#!/bin/bash
# The man pages (man/*.1, man/*.8) against the programs they describe.  Everything is derived
# from what the build and the pages hold, nothing from a list here, so the test follows the
# command lines as they change:
#   - every program in IMC_BIN (the executables at its top) has a page man/PROG.N, and every
#     page a program;
#   - every flag that "PROG --help" prints (a word such as --state-dir or -o) is an option the
#     page defines (the tag line of a .TP paragraph), and every option the page defines is in
#     PROG --help;
#   - each page renders with "man --warnings" and no warning, and names PROG in its .TH;
#   - make install puts the programs, the pages and imcctl's bash completion under DESTDIR/PREFIX,
#     where man finds the pages.
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/../lib/common.sh"

need_tool man make install
MAN_DIR=$IMC_ROOT/man

# The programs of the build: the executable files at the top of IMC_BIN.
mapfile -t PROGS < <(find "$IMC_BIN" -maxdepth 1 -type f -perm -u+x -printf '%f\n' | sort)
[ "${#PROGS[@]}" -gt 0 ] || bail "programs in $IMC_BIN" "build them with: make O=build/check SAN=1 programs"
note "programs: ${PROGS[*]}"

# flags_in: the flags in the text on stdin (-x or --word, not inside a word like read-only).
flags_in() {
	grep -oE '(^|[^A-Za-z0-9_-])--?[A-Za-z][A-Za-z0-9-]*' | sed 's/^[^-]*//' | sort -u
}

# man_options PAGE: the flags on the tag lines of the page's .TP paragraphs, with roff's
# escapes (\-, \fB...) removed.
man_options() {
	awk 'tag { print; tag = 0 } /^\.TP/ { tag = 1 }' "$1" |
		sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\f(..//g' | flags_in
}

# page_of PROG: its page, man/PROG.1 or man/PROG.8 (nothing when there is none).
page_of() {
	local p
	for p in "$MAN_DIR/$1".[18]; do
		[ -f "$p" ] && printf '%s\n' "$p"
	done
}

# --- pages and programs ------------------------------------------------------------------------

for prog in "${PROGS[@]}"; do
	page=$(page_of "$prog")
	if [ -z "$page" ]; then
		not_ok "$prog has a man page" "no $MAN_DIR/$prog.1 or $MAN_DIR/$prog.8"
		continue
	fi
	ok "$prog has a man page (${page#"$IMC_ROOT"/})"
done
for page in "$MAN_DIR"/*.[18]; do
	prog=$(basename "${page%.*}")
	check "${page#"$IMC_ROOT"/} describes a program of the build" test -x "$IMC_BIN/$prog"
done

# --- --help and the pages ------------------------------------------------------------------------

for prog in "${PROGS[@]}"; do
	page=$(page_of "$prog")
	[ -n "$page" ] || continue
	rc=0
	# A wrapper's --help must be its own, not that of the program it runs (imc-runtime).
	help=$(IMCACHE_RUNTIME=/nonexistent "$IMC_BIN/$prog" --help 2>&1) || rc=$?
	check_eq "$prog --help exits 0" 0 "$rc"
	check_match "$prog --help is $prog's own usage" "^usage: $prog " "$help"
	flags_in <<<"$help" >"$TEST_TMP/$prog.help"
	man_options "$page" >"$TEST_TMP/$prog.man"
	check_match "$prog --help prints flags" . "$(cat "$TEST_TMP/$prog.help")"
	check_match "${page##*/} defines options" . "$(cat "$TEST_TMP/$prog.man")"
	check_eq "every flag of $prog --help is an option of ${page##*/}" "" \
		"$(comm -23 "$TEST_TMP/$prog.help" "$TEST_TMP/$prog.man" | paste -sd ' ')"
	check_eq "every option of ${page##*/} is in $prog --help" "" \
		"$(comm -13 "$TEST_TMP/$prog.help" "$TEST_TMP/$prog.man" | paste -sd ' ')"
done

# --- rendering -----------------------------------------------------------------------------------

for page in "$MAN_DIR"/*.[18]; do
	name=${page##*/}
	prog=${name%.*}
	rc=0
	warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >"$TEST_TMP/$name.txt") || rc=$?
	check_eq "$name renders (man -l exits 0)" 0 "$rc"
	check_eq "$name renders without warnings" "" "$warnings"
	check_match "$name's .TH names $prog, section ${name##*.}" \
		"^\\.TH ${prog^^} ${name##*.} " "$(grep '^\.TH' "$page")"
	check_match "$name renders a NAME section naming $prog" "^NAME" "$(head -n 5 "$TEST_TMP/$name.txt" | sed 's/^ *//')"
	width=$(LC_ALL=C.UTF-8 wc -L <"$TEST_TMP/$name.txt")
	check_eq "no line of $name is wider than 80 columns ($width)" 1 "$((width <= 80))"
done

# --- make install --------------------------------------------------------------------------------

DEST=$TEST_TMP/dest
PROG_PATHS=()
for prog in "${PROGS[@]}"; do
	PROG_PATHS+=("$IMC_BIN/$prog")
done
# PROGS= the programs under test: make install copies them as they are (no rebuild).
check "make install DESTDIR=... PREFIX=/usr" \
	make -C "$IMC_ROOT" --no-print-directory install DESTDIR="$DEST" PREFIX=/usr \
	PROGS="${PROG_PATHS[*]}"
for prog in "${PROGS[@]}"; do
	check "make install puts $prog in /usr/bin" test -x "$DEST/usr/bin/$prog"
done
for page in "$MAN_DIR"/*.[18]; do
	name=${page##*/}
	prog=${name%.*}
	sec=${name##*.}
	check_eq "man finds the installed $prog($sec)" \
		"$DEST/usr/share/man/man$sec/$name" \
		"$(MANPATH="$DEST/usr/share/man" man -w "$sec" "$prog" 2>&1)"
done
check "make install puts imcctl's bash completion in share/bash-completion/completions" \
	cmp "$IMC_ROOT/completion/imcctl.bash" "$DEST/usr/share/bash-completion/completions/imcctl"
check "make uninstall removes it all" \
	make -C "$IMC_ROOT" --no-print-directory uninstall DESTDIR="$DEST" PREFIX=/usr \
	PROGS="${PROG_PATHS[*]}"
check_eq "nothing is left but directories" "" "$(find "$DEST" ! -type d)"

done_testing
