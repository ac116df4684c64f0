# imcache — build, test and benchmark.
#   make            release build in build/
#   make check      unit + integration tests, built with ASan+UBSan in build/check/, then the
#                   device-mapper tests in a VM (make check-vm)
#   make bench      benchmarks (release build), tables and plots in build/bench/
#   make plots      docs/plots/*.png from the bench data kept in docs/bench-data/ (no bench run)
#   make install    programs, man pages and bash completion under DESTDIR/PREFIX
#   make format     clang-format the tree

O ?= build
SAN ?= 0
CC ?= cc
PKGS := libcurl jansson libmicrohttpd libarchive openssl devmapper libzstd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS)) -lpthread
CHECK_LIBS := $(shell pkg-config --libs check)

CFLAGS_BASE := -std=gnu11 -g -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wno-format-truncation \
	-D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -fno-strict-aliasing -MMD -MP
ifeq ($(SAN),1)
CFLAGS_OPT := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined -DIMC_TESTING
LDFLAGS_SAN := -fsanitize=address,undefined
else
CFLAGS_OPT := -O2 -fstack-protector-strong -D_FORTIFY_SOURCE=2
LDFLAGS_SAN :=
endif
# FUZZ=1: the library and tests/fuzz/fuzz_*.c built with clang for libFuzzer, ASan and UBSan, into
# build/fuzz/ (see make fuzz).  clang does not know every gcc warning CFLAGS_BASE names.
FUZZ ?= 0
FUZZ_O := build/fuzz
ifeq ($(FUZZ),1)
ifneq ($(origin O),command line)
O := $(FUZZ_O)
endif
CC := clang
CFLAGS_OPT := -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
	-fno-sanitize-recover=undefined -DIMC_TESTING -Wno-unknown-warning-option
LDFLAGS_SAN := -fsanitize=address,undefined
endif
ALL_CFLAGS = $(CFLAGS_BASE) $(CFLAGS_OPT) $(PKG_CFLAGS) $(CFLAGS)

# One static library per room (docs/architecture.md), each program linked with the rooms it
# needs and only their system libraries: imcctl gets common/, oci/, its own room and the API's
# wire shapes (api/wire.c), so no store, builder, server or libdevmapper code reaches it.
ROOMS := common net oci store builder dist attach api client
MAIN_SRCS := $(wildcard $(addsuffix /*_main.c,$(ROOMS)))
room_objs = $(patsubst %.c,$(O)/obj/%.o,$(filter-out $(MAIN_SRCS),$(wildcard $(1)/*.c)))
room_lib = $(O)/lib$(1).a
# Dependents before what they use (the arrows of docs/architecture.md).
SERVER_ROOMS := api builder dist oci net store common
AGENT_ROOMS := attach dist oci net store common
ALL_ROOMS := api attach builder dist oci net store common
ALL_LIBS := $(foreach r,$(ALL_ROOMS),$(call room_lib,$(r)))
CLIENT_LINK := $(call room_lib,client) $(O)/obj/api/wire.o $(call room_lib,oci) $(call room_lib,net) \
	$(call room_lib,common)
CLIENT_PKG_LIBS := $(shell pkg-config --libs libcurl jansson openssl) -lpthread

PROGS := $(O)/imcd $(O)/imcctl $(O)/imc-attach $(O)/imc-runtime
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(O)/tests/%)

.PHONY: all clean check unit integration bench format format-check programs check-vm bench-vm \
	plots plots-update install uninstall
all: $(PROGS)
programs: $(PROGS)

$(O)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(foreach r,$(ROOMS),$(eval $(call room_lib,$(r)): $(call room_objs,$(r))))
$(O)/lib%.a:
	@rm -f $@
	$(AR) rcs $@ $^

$(O)/imcd: $(O)/obj/api/imcd_main.o $(foreach r,$(SERVER_ROOMS),$(call room_lib,$(r)))
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)
$(O)/imcctl: $(O)/obj/client/imcctl_main.o $(CLIENT_LINK)
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS) -o $@ $^ $(CLIENT_PKG_LIBS)
$(O)/imc-attach: $(O)/obj/attach/imc_attach_main.o $(foreach r,$(AGENT_ROOMS),$(call room_lib,$(r)))
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)
$(O)/imc-runtime: $(O)/obj/attach/imc_runtime_main.o \
		$(foreach r,$(AGENT_ROOMS),$(call room_lib,$(r)))
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(O)/tests/%: $(O)/obj/tests/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(PKG_LIBS)

unit-bins: $(UNIT_BINS)

BENCH_SRCS := $(wildcard tests/bench/*.c)
BENCH_BINS := $(BENCH_SRCS:tests/bench/%.c=$(O)/bench/%)
$(O)/bench/%: $(O)/obj/tests/bench/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# make check: unit tests under ASan+UBSan, each fuzz target for a few seconds, then the
# integration tests (their summary line closes the run).
CHECK_O := build/check
check: format-check
	$(MAKE) O=$(CHECK_O) SAN=1 programs unit-bins
	$(MAKE) O=$(CHECK_O) SAN=1 unit
	$(MAKE) FUZZ_SECONDS=10 fuzz-run
	$(MAKE) O=$(CHECK_O) SAN=1 integration
	$(MAKE) O=$(CHECK_O) SAN=1 check-vm

# make check-vm: what needs device-mapper (the thin store driver: the store suite against it,
# its own tests, end to end with crun) in a QEMU VM booted from the installed Debian kernel
# (tests/vm/).  Skips with the reason when QEMU or the kernel is missing, fails so in CI=true.
check-vm: programs unit-bins
	IMC_BIN=$(abspath $(O)) tests/vm/run.sh

# make bench-vm: both store drivers side by side in the VM (clone+activate+mount, build time).
bench-vm: programs $(BENCH_BINS)
	IMC_BIN=$(abspath $(O)) tests/bench/bench_vm_drivers.sh

# make fuzz: the libFuzzer targets (tests/fuzz/fuzz_*.c), one per parser, in build/fuzz/.
# make fuzz-run: replay tests/fuzz/regressions/, then run each target for FUZZ_SECONDS from its
# corpus in build/fuzz/corpus/ (seeded by tests/fuzz/mkcorpus.sh); fails on any crash.
.PHONY: fuzz fuzz-run fuzz-bins
FUZZ_SECONDS ?= 15
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(O)/%)
$(O)/fuzz_%: $(O)/obj/tests/fuzz/fuzz_%.o $(ALL_LIBS)
	$(CC) -fsanitize=fuzzer,address,undefined $(LDFLAGS) -o $@ $^ $(PKG_LIBS)
fuzz-bins: $(FUZZ_BINS)
.SECONDARY: $(FUZZ_SRCS:%.c=$(O)/obj/%.o)
fuzz:
	$(MAKE) FUZZ=1 O=$(FUZZ_O) fuzz-bins
fuzz-run: fuzz
	tests/fuzz/run.sh $(FUZZ_O) $(FUZZ_SECONDS)

SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; rc=0; $(SAN_ENV) CK_FORK=yes $$t || rc=$$?; \
	  if [ $$rc = 77 ] && [ "$${CI:-}" != true ]; then echo "   (skipped)"; \
	  elif [ $$rc = 77 ] && [ "$${t##*/}" = test_thin ]; then echo "   (skipped here: make check-vm runs it in a VM)"; \
	  elif [ $$rc = 77 ]; then echo "   skipped in CI, where nothing may skip"; exit 1; \
	  elif [ $$rc != 0 ]; then exit $$rc; fi; done

integration: programs
	$(SAN_ENV) IMC_BIN=$(abspath $(O)) tests/integration/run-all.sh

bench: programs $(BENCH_BINS)
	IMC_BIN=$(abspath $(O)) tests/bench/run.sh

# make plots: the plots of docs/benchmarks.md, from the data files of the latest bench run that
# were kept in docs/bench-data/; make plots-update keeps those of build/bench/ (the last make bench)
# first.  tests/bench/plot.sh says which file feeds which plot.
PLOT_DATA ?= docs/bench-data
PLOT_OUT ?= docs/plots
PLOT_FILES := attach_size attach_conc pod_start build_big build_layers
plots:
	PLOT_STRICT=1 tests/bench/plot.sh $(PLOT_DATA) $(PLOT_OUT)
plots-update:
	@mkdir -p $(PLOT_DATA)
	cp $(foreach f,$(PLOT_FILES),build/bench/$(f).dat) $(PLOT_DATA)/
	$(MAKE) plots

# make install: the programs (release build in $(O)), their man pages and imcctl's bash completion.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
MAN_PAGES := $(wildcard man/*.[18])
install: $(PROGS)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(BASHCOMPDIR)
	install -m 0755 $(PROGS) $(DESTDIR)$(BINDIR)/
	install -m 0644 $(filter %.1,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(filter %.8,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 completion/imcctl.bash $(DESTDIR)$(BASHCOMPDIR)/imcctl
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(PROGS))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(filter %.1,$(MAN_PAGES)))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(filter %.8,$(MAN_PAGES)))) \
		$(DESTDIR)$(BASHCOMPDIR)/imcctl

format:
	clang-format -i $$(git ls-files '*.c' '*.h')
format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(O) -name '*.d' 2>/dev/null)
