# Thin wrapper around CMake + ctest. `make run` and `make test` work on a fresh Debian 12 machine.
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
BUILD      ?= build
CMAKE_ARGS ?=
ARGS       ?=
FUZZ_SECONDS ?= 30

.PHONY: all build run test unit asan tsan fuzz bench lint clean deps test-deps

all: build

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --test
	@scripts/install-npm-peers.sh

# build/nexo
build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: deps build
	./$(BUILD)/nexo run $(ARGS)

# The whole suite: lint, the suite under ASan+UBSan, the threaded tests under TSan, then the
# suite on the normal build last, so the closing ctest summary counts the whole suite.
test: test-deps lint
	@$(MAKE) --no-print-directory build CMAKE_ARGS="$(CMAKE_ARGS) -DNEXO_TESTS_REQUIRED=ON"
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory tsan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

asan:
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNEXO_SANITIZE=address,undefined \
		-DNEXO_TESTS_REQUIRED=ON >/dev/null
	@cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS)

# TSan: the parts that cross threads (mailbox, store thread, logging, HTTP under load).
tsan:
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DNEXO_SANITIZE=thread -DNEXO_TESTS_REQUIRED=ON >/dev/null
	@cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp \
		ctest --output-on-failure -j $(JOBS) -L threaded

# libFuzzer targets, each for FUZZ_SECONDS on its seed corpus.
fuzz:
	@scripts/install-deps.sh --fuzz
	@CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DNEXO_FUZZ=ON -DNEXO_TESTS=OFF \
		-DNEXO_SANITIZE=address,undefined >/dev/null
	@cmake --build build-fuzz -j $(JOBS)
	@scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

bench: test-deps build
	@bench/run.sh $(BUILD)

lint:
	@scripts/lint.sh

clean:
	rm -rf build build-asan build-tsan build-fuzz
