/* containerd's filter syntax (its filters package) and the snapshot fields it selects. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snap.h"

struct scan {
	const char *s;
	size_t pos, len;
	imc_error *err;
};

static void skip_space(struct scan *sc)
{
	while (sc->pos < sc->len && isspace((unsigned char)sc->s[sc->pos]))
		sc->pos++;
}

static int hexdigit(char c)
{
	return isdigit((unsigned char)c)    ? c - '0'
	       : isxdigit((unsigned char)c) ? (tolower((unsigned char)c) - 'a' + 10)
					    : -1;
}

/* One escape after a backslash in "...": Go's simple escapes and \xHH. */
static int unescape(struct scan *sc, struct imc_buf *out)
{
	static const char from[] = "abfnrtv\\\"", to[] = "\a\b\f\n\r\t\v\\\"";
	const char *p;
	char c;

	if (sc->pos >= sc->len)
		return imc_err(sc->err, EINVAL, "filter: unterminated quoted string");
	c = sc->s[sc->pos++];
	if ((p = strchr(from, c)) && c) {
		c = to[p - from];
		return imc_buf_append(out, &c, 1);
	}
	if (c == 'x' && sc->pos + 2 <= sc->len && hexdigit(sc->s[sc->pos]) >= 0 &&
	    hexdigit(sc->s[sc->pos + 1]) >= 0) {
		c = (char)(hexdigit(sc->s[sc->pos]) << 4 | hexdigit(sc->s[sc->pos + 1]));
		sc->pos += 2;
		return imc_buf_append(out, &c, 1);
	}
	return imc_err(sc->err, EINVAL, "filter: bad escape \\%c at %zu", c, sc->pos - 1);
}

/* A quoted string at pos (opening quote q: '"' or '/'), its text in *ret. */
static int scan_quoted(struct scan *sc, char **ret)
{
	char q = sc->s[sc->pos++];
	struct imc_buf out = {0};
	int r = 0;

	while (r >= 0) {
		char c;
		if (sc->pos >= sc->len) {
			r = imc_err(sc->err, EINVAL, "filter: unterminated quoted string");
			break;
		}
		c = sc->s[sc->pos++];
		if (c == q)
			break;
		if (c == '\\' && q == '"')
			r = unescape(sc, &out);
		else if (c == '\\' && q == '/' && sc->pos < sc->len && sc->s[sc->pos] == '/')
			r = imc_buf_append(&out, &sc->s[sc->pos++], 1);
		else
			r = imc_buf_append(&out, &c, 1);
	}
	if (r >= 0 && imc_buf_append(&out, "", 1) < 0)
		r = imc_err(sc->err, ENOMEM, "out of memory");
	if (r < 0) {
		imc_buf_free(&out);
		return r;
	}
	*ret = out.data;
	return 0;
}

static bool field_char(char c, bool first)
{
	return isalpha((unsigned char)c) || c == '_' || (!first && isdigit((unsigned char)c));
}

static int scan_field(struct scan *sc, char **ret)
{
	size_t start = sc->pos;

	if (sc->pos < sc->len && (sc->s[sc->pos] == '"' || sc->s[sc->pos] == '/'))
		return scan_quoted(sc, ret);
	if (sc->pos >= sc->len || !field_char(sc->s[sc->pos], true))
		return imc_err(sc->err, EINVAL, "filter: expected a field name at %zu", sc->pos);
	while (sc->pos < sc->len && field_char(sc->s[sc->pos], false))
		sc->pos++;
	*ret = strndup(sc->s + start, sc->pos - start);
	return *ret ? 0 : imc_err(sc->err, ENOMEM, "out of memory");
}

static int scan_value(struct scan *sc, char **ret)
{
	size_t start = sc->pos;

	skip_space(sc);
	if (sc->pos < sc->len && (sc->s[sc->pos] == '"' || sc->s[sc->pos] == '/'))
		return scan_quoted(sc, ret);
	start = sc->pos;
	while (sc->pos < sc->len && sc->s[sc->pos] != ',' &&
	       !isspace((unsigned char)sc->s[sc->pos]))
		sc->pos++;
	if (sc->pos == start)
		return imc_err(sc->err, EINVAL, "filter: expected a value at %zu", sc->pos);
	*ret = strndup(sc->s + start, sc->pos - start);
	return *ret ? 0 : imc_err(sc->err, ENOMEM, "out of memory");
}

static int scan_op(struct scan *sc, enum snap_op *ret)
{
	static const char *const ops[] = {"==", "!=", "~="};
	static const enum snap_op kinds[] = {SNAP_OP_EQ, SNAP_OP_NE, SNAP_OP_MATCH};

	skip_space(sc);
	if (sc->pos >= sc->len || sc->s[sc->pos] == ',') {
		*ret = SNAP_OP_PRESENT;
		return 0;
	}
	for (size_t i = 0; i < IMC_ARRAY_SIZE(ops); i++)
		if (sc->len - sc->pos >= 2 && memcmp(sc->s + sc->pos, ops[i], 2) == 0) {
			sc->pos += 2;
			*ret = kinds[i];
			return 0;
		}
	return imc_err(sc->err, EINVAL, "filter: expected an operator (==, != or ~=) at %zu",
		       sc->pos);
}

/*
 * glibc's regcomp copies a repeated subexpression once per repetition (x+ becomes x x*, x{3}
 * x x x), so nested repetitions grow the compiled tree exponentially: a filter such as
 * name~=a+++...+ took gigabytes, and repetitions of optional parts (a?+++...) cost seconds in
 * its epsilon closures.  Before regcomp the pattern is sized the same way and refused above
 * SNAP_REGEX_MAX_NODES nodes or SNAP_REGEX_MAX_REPEATS repetitions nested in one another; as in
 * Go's regexp, which containerd's filters use, a quantifier right after a quantifier (a**) and
 * back-references are refused.
 */
struct re_size {
	const char *s;
	size_t pos, len;
};

static size_t re_clamp(size_t n)
{
	return n > SNAP_REGEX_MAX_NODES ? SNAP_REGEX_MAX_NODES + 1 : n;
}

/* Past a bracket expression at pos ('['), its classes ([:alpha:], [=a=], [.a.]) included. */
static void re_skip_bracket(struct re_size *r)
{
	r->pos++;
	if (r->pos < r->len && r->s[r->pos] == '^')
		r->pos++;
	if (r->pos < r->len && r->s[r->pos] == ']')
		r->pos++;
	while (r->pos < r->len && r->s[r->pos] != ']') {
		char c = r->s[r->pos];
		if (c == '[' && r->pos + 1 < r->len && strchr(":=.", r->s[r->pos + 1]) &&
		    r->s[r->pos + 1]) {
			const char end[3] = {r->s[r->pos + 1], ']', 0};
			const char *e = strstr(r->s + r->pos + 2, end);
			r->pos = e ? (size_t)(e - r->s) + 2 : r->len;
		} else {
			r->pos++;
		}
	}
	r->pos++;
}

static size_t re_count(struct re_size *r)
{
	size_t n = 0;
	while (r->pos < r->len && isdigit((unsigned char)r->s[r->pos]))
		n = re_clamp(n * 10 + (size_t)(r->s[r->pos++] - '0'));
	return n;
}

/* The copies a quantifier at pos makes of its operand, past it; 0 if pos holds none. */
static size_t re_quantifier(struct re_size *r)
{
	char c = r->pos < r->len ? r->s[r->pos] : 0;
	size_t save = r->pos, lo, hi;

	if (c == '*' || c == '?' || c == '+') {
		r->pos++;
		return c == '+' ? 2 : 1;
	}
	if (c != '{')
		return 0;
	r->pos++;
	lo = hi = re_count(r);
	if (r->pos < r->len && r->s[r->pos] == ',') {
		r->pos++;
		hi = r->pos < r->len && isdigit((unsigned char)r->s[r->pos]) ? re_count(r) : lo + 1;
	}
	if (r->pos < r->len && r->s[r->pos] == '}') {
		r->pos++;
		return hi > lo ? hi : lo ? lo : 1;
	}
	r->pos = save; /* a literal '{' */
	return 0;
}

/* One group of the pattern being sized: its nodes so far, and its last operand's. */
struct re_group {
	size_t sum, last;     /* nodes */
	size_t rep, last_rep; /* repetitions nested in it, in its last operand */
};

struct re_state {
	struct re_group g[SNAP_REGEX_MAX_DEPTH + 1];
	size_t depth;
	bool after_quantifier;
};

/* The last operand is done: its nodes and repetitions count for its group. */
static void re_flush(struct re_group *g)
{
	g->sum = re_clamp(g->sum + g->last);
	g->rep = g->last_rep > g->rep ? g->last_rep : g->rep;
	g->last = g->last_rep = 0;
}

static int re_repeat(struct re_state *st, size_t copies, imc_error *err)
{
	struct re_group *g = &st->g[st->depth];

	if (st->after_quantifier) /* as Go's regexp, which containerd uses: a** is refused */
		return imc_err(err, EINVAL, "filter: invalid nested repetition operator");
	st->after_quantifier = true;
	g->last = re_clamp((g->last ? g->last : 1) * copies + 1);
	if (++g->last_rep > SNAP_REGEX_MAX_REPEATS)
		return imc_err(err, EINVAL,
			       "filter: regular expression repeats a repetition more than %d deep",
			       SNAP_REGEX_MAX_REPEATS);
	return 0;
}

/* One operand or operator at r->pos that is not a quantifier. */
static int re_operand(struct re_size *r, struct re_state *st, imc_error *err)
{
	char c = r->s[r->pos];
	struct re_group *g = &st->g[st->depth];

	st->after_quantifier = false;
	re_flush(g);
	g->last = 1;
	if (c == '\\' && r->pos + 1 < r->len && isdigit((unsigned char)r->s[r->pos + 1]))
		return imc_err(err, EINVAL, "filter: back-references are not supported");
	if (c == '(' && st->depth == SNAP_REGEX_MAX_DEPTH)
		return imc_err(err, EINVAL,
			       "filter: regular expression nested deeper than %d groups",
			       SNAP_REGEX_MAX_DEPTH);
	if (c == '(') {
		g->last = 0;
		st->g[++st->depth] = (struct re_group){0};
	} else if (c == ')' && st->depth > 0) {
		g->last = 0;
		st->depth--;
		st->g[st->depth].last = re_clamp(g->sum + 1);
		st->g[st->depth].last_rep = g->rep;
	} else if (c == '[') {
		re_skip_bracket(r);
		return 0;
	} else if (c == '\\' && r->pos + 1 < r->len) {
		r->pos++;
	}
	r->pos++;
	return 0;
}

/* 0 if the tree regcomp would build for the pattern stays small, else -1 with err set. */
static int re_check(const char *pattern, imc_error *err)
{
	struct re_size r = {.s = pattern, .len = strlen(pattern)};
	struct re_state st = {0};
	size_t copies, total = 0;

	while (r.pos < r.len && total <= SNAP_REGEX_MAX_NODES) {
		int rc = (copies = re_quantifier(&r)) ? re_repeat(&st, copies, err)
						      : re_operand(&r, &st, err);
		if (rc < 0)
			return rc;
		total = re_clamp(st.g[st.depth].sum + st.g[st.depth].last);
	}
	total = 0;
	for (size_t d = 0; d <= st.depth; d++)
		total = re_clamp(total + st.g[d].sum + st.g[d].last);
	if (total > SNAP_REGEX_MAX_NODES)
		return imc_err(err, EINVAL,
			       "filter: regular expression too complex (its repetitions "
			       "expand past %d nodes)",
			       SNAP_REGEX_MAX_NODES);
	return 0;
}

static int scan_selector(struct scan *sc, struct snap_selector *sel)
{
	int r;

	for (;;) {
		skip_space(sc);
		if (sel->n_path == SNAP_FILTER_MAX_PATH)
			return imc_err(sc->err, EINVAL, "filter: more than %d fields in a path",
				       SNAP_FILTER_MAX_PATH);
		if ((r = scan_field(sc, &sel->path[sel->n_path])) < 0)
			return r;
		sel->n_path++;
		skip_space(sc);
		if (sc->pos >= sc->len || sc->s[sc->pos] != '.')
			break;
		sc->pos++;
	}
	if ((r = scan_op(sc, &sel->op)) < 0)
		return r;
	if (sel->op == SNAP_OP_PRESENT)
		return 0;
	if ((r = scan_value(sc, &sel->value)) < 0)
		return r;
	if (sel->op == SNAP_OP_MATCH) {
		if (re_check(sel->value, sc->err) < 0)
			return -1;
		if (regcomp(&sel->re, sel->value, REG_EXTENDED | REG_NOSUB) != 0)
			return imc_err(sc->err, EINVAL, "filter: bad regular expression");
		sel->has_re = true;
	}
	return 0;
}

int snap_filter_parse(const char *s, struct snap_filter *ret, imc_error *err)
{
	struct scan sc = {.s = s, .len = strlen(s), .err = err};
	int r;

	*ret = (struct snap_filter){0};
	if (sc.len > SNAP_FILTER_MAX_LEN)
		return imc_err(err, EINVAL, "filter: longer than %d bytes", SNAP_FILTER_MAX_LEN);
	for (;;) {
		if (ret->n == SNAP_FILTER_MAX_SELECTORS) {
			snap_filter_free(ret);
			return imc_err(err, EINVAL, "filter: more than %d selectors",
				       SNAP_FILTER_MAX_SELECTORS);
		}
		r = scan_selector(&sc, &ret->sel[ret->n++]);
		skip_space(&sc);
		if (r == 0 && sc.pos < sc.len && sc.s[sc.pos] != ',')
			r = imc_err(err, EINVAL, "filter: unexpected input at %zu", sc.pos);
		if (r < 0) {
			snap_filter_free(ret);
			return r;
		}
		if (sc.pos >= sc.len)
			return 0;
		sc.pos++; /* the comma */
	}
}

void snap_filter_free(struct snap_filter *f)
{
	for (size_t i = 0; i < f->n; i++) {
		struct snap_selector *sel = &f->sel[i];
		for (size_t j = 0; j < sel->n_path; j++)
			free(sel->path[j]);
		free(sel->value);
		if (sel->has_re)
			regfree(&sel->re);
	}
	*f = (struct snap_filter){0};
}

static const char *kind_name(enum snap_kind k)
{
	return k == SNAP_KIND_ACTIVE	  ? "active"
	       : k == SNAP_KIND_VIEW	  ? "view"
	       : k == SNAP_KIND_COMMITTED ? "committed"
					  : NULL;
}

/* The label named by path[1..] joined with dots (containerd's checkMap). */
static const char *label_field(const struct snap_selector *sel, const struct snap_info *info)
{
	char key[SNAP_MAX_LABEL + 1];
	size_t o = 0;
	json_t *v;

	if (sel->n_path < 2 || !info->labels)
		return NULL;
	for (size_t i = 1; i < sel->n_path; i++) {
		int n = snprintf(key + o, sizeof(key) - o, "%s%s", i > 1 ? "." : "", sel->path[i]);
		if (n < 0 || (size_t)n >= sizeof(key) - o)
			return NULL;
		o += (size_t)n;
	}
	v = json_object_get(info->labels, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

static const char *field(const struct snap_selector *sel, const struct snap_info *info)
{
	const char *f = sel->path[0];

	if (strcmp(f, "kind") == 0)
		return kind_name(info->kind);
	if (strcmp(f, "name") == 0)
		return info->name;
	if (strcmp(f, "parent") == 0)
		return info->parent;
	if (strcmp(f, "labels") == 0)
		return label_field(sel, info);
	return NULL;
}

bool snap_filter_match(const struct snap_filter *f, const struct snap_info *info)
{
	for (size_t i = 0; i < f->n; i++) {
		const struct snap_selector *sel = &f->sel[i];
		const char *v = field(sel, info);
		bool ok;
		switch (sel->op) {
		case SNAP_OP_PRESENT:
			ok = v != NULL;
			break;
		case SNAP_OP_EQ:
			ok = v && strcmp(v, sel->value) == 0;
			break;
		case SNAP_OP_NE:
			ok = strcmp(v ? v : "", sel->value) != 0;
			break;
		default:
			ok = regexec(&sel->re, v ? v : "", 0, NULL, 0) == 0;
			break;
		}
		if (!ok)
			return false;
	}
	return true;
}
