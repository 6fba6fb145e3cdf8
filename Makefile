# t5gemma: build, test, demo, bench.
#   make            build ./t5gemma (installs missing Debian packages first, see `make deps`)
#   make test       build and run every test; ends with "N passed, N failed"
#   make SAN=1 ...  AddressSanitizer + UndefinedBehaviorSanitizer build (objects go to build-san/)
#   make MPI=0      build without MPI even when OpenMPI is installed
#   make demo       the end-to-end job on a real corpus (see README)
#   make bench      performance figures (see README)

CC      ?= gcc
CXX     ?= g++
SAN     ?= 0
MPI     ?= $(shell command -v mpicc >/dev/null 2>&1 && test -f /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h && echo 1 || echo 0)
OPT     ?= -O3 -march=native -ffp-contract=off -fno-math-errno

HDF5_CFLAGS := -I/usr/include/hdf5/serial
HDF5_LIBS   := -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5

CFLAGS  = -std=gnu11 $(OPT) -g -fopenmp -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare \
          -I. $(HDF5_CFLAGS) -D_FILE_OFFSET_BITS=64
CXXFLAGS = -std=c++17 $(OPT) -g -Wall -I.
LDLIBS  = -fopenmp -lopenblas $(HDF5_LIBS) -lzstd -lcjson -lsentencepiece -lsentencepiece_train -lstdc++ -lm -lpthread

BUILD   = build
ifeq ($(SAN),1)
  BUILD    = build-san
  OPT      = -O1 -march=native -fno-omit-frame-pointer
  CFLAGS  += -fsanitize=address,undefined -fno-sanitize-recover=undefined
  CXXFLAGS+= -fsanitize=address,undefined
  LDLIBS  += -fsanitize=address,undefined
endif
ifeq ($(MPI),1)
  CFLAGS  += -DT5G_MPI $(shell mpicc --showme:compile)
  LDLIBS  += $(shell mpicc --showme:link)
endif

LIB_DIRS  = model optim data eval train
LIB_C     = $(filter-out train/main.c,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
LIB_CXX   = $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cc))
LIB_OBJ   = $(patsubst %.c,$(BUILD)/%.o,$(LIB_C)) $(patsubst %.cc,$(BUILD)/%.o,$(LIB_CXX))
LIB       = $(BUILD)/libt5gemma.a
TEST_SRC  = $(wildcard tests/test_*.c)
TEST_BIN  = $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
HDRS      = $(foreach d,$(LIB_DIRS) tests,$(wildcard $(d)/*.h))
PROG      = $(if $(filter build,$(BUILD)),t5gemma,$(BUILD)/t5gemma)
ifeq ($(SAN),1)
  PROG    = $(BUILD)/t5gemma
endif

.PHONY: all deps test test-fast tests-build clean demo bench experiments check-realsize

all: $(PROG)
$(PROG) $(TEST_BIN) $(LIB_OBJ) $(BUILD)/train/main.o: | deps

# Debian packages the build, the tests and the demo need. Installs only what is missing.
DEB_PKGS = gcc g++ make libopenblas-dev libhdf5-dev hdf5-tools libzstd-dev zstd libcjson-dev \
           libsentencepiece-dev sentencepiece libopenmpi-dev openmpi-bin \
           python3-torch python3-numpy python3-h5py python3-matplotlib nodejs npm
deps:
	@./.ci/deps.sh $(DEB_PKGS)

$(BUILD)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc $(HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(PROG): $(BUILD)/train/main.o $(LIB)
	$(CC) $(CFLAGS) $(BUILD)/train/main.o -Wl,--whole-archive $(LIB) -Wl,--no-whole-archive -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB) tests/check.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)

# tests/test_steady_alloc.c counts the allocation calls our code makes: calls from the objects
# linked into it (libt5gemma.a, the test) go to its counting wrappers; shared libraries' do not.
$(BUILD)/tests/test_steady_alloc: LDLIBS += -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=reallocarray,--wrap=free \
  -Wl,--wrap=posix_memalign,--wrap=aligned_alloc,--wrap=memalign,--wrap=valloc,--wrap=strdup,--wrap=strndup \
  -Wl,--wrap=vasprintf,--wrap=getline,--wrap=getdelim,--wrap=mmap,--wrap=_Znwm,--wrap=_Znam

tests-build: $(PROG) $(TEST_BIN)

test: deps tests-build
	@BUILD=$(BUILD) PROG=$(PROG) ./tests/run.sh

demo: all
	@./train/demo.sh

bench: all
	@./train/bench.sh

experiments: all
	@./train/experiments.sh

check-realsize: all
	@./train/check_realsize.sh

clean:
	rm -rf build build-san t5gemma
