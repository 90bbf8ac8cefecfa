# vtl build. `make` builds ./vtl (host) and build/vtl/core.so (module for a stock lua5.4).
# CUDA=auto|0|1 (auto: build the CUDA backend when nvcc is found; it links cuDNN, CUDNN_HOME=dir
# when cuDNN is neither in the CUDA toolkit nor in the system's folders). DEPS_ROOT=dir takes
# headers and libraries from an unpacked Debian tree. SAN=1 builds with ASan + UBSan.

PREFIX   ?= /usr/local
CC       ?= gcc
ARCH     ?= -march=native
OPT      ?= -O3
CUDA     ?= auto
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
BUILD    ?= build
DEPS_ROOT ?=

.DEFAULT_GOAL := all

ifeq ($(CUDA),auto)
  ifneq ($(NVCC),)
    CUDA_ON := 1
  else
    CUDA_ON := 0
  endif
else
  CUDA_ON := $(CUDA)
endif

LIBDIR    := /usr/lib/x86_64-linux-gnu
INCDIRS   := -I/usr/include/lua5.4 -I/usr/include/stb -I$(LIBDIR)/../../include/x86_64-linux-gnu/openblas-openmp
BLASDIR   := $(LIBDIR)/openblas-openmp
ifneq ($(DEPS_ROOT),)
  INCDIRS := -I$(DEPS_ROOT)/usr/include -I$(DEPS_ROOT)/usr/include/x86_64-linux-gnu -I$(DEPS_ROOT)/usr/include/lua5.4 -I$(DEPS_ROOT)/usr/include/stb \
             -I$(DEPS_ROOT)/usr/include/x86_64-linux-gnu/openblas-openmp $(INCDIRS)
  BLASDIR := $(DEPS_ROOT)$(LIBDIR)/openblas-openmp
  # RPATH (not RUNPATH) so the libraries found there also find their own dependencies there
  DEPLIBS := -L$(DEPS_ROOT)$(LIBDIR) -Wl,-rpath,$(DEPS_ROOT)$(LIBDIR) -Wl,--disable-new-dtags
endif

# nvcc: warnings on (186, an unsigned compared with zero, comes from templates over all dtypes)
NVCCFLAGS ?= -O3 -std=c++17 -Xcompiler -fPIC,-Wall,-Wextra,-Wno-unused-parameter -diag-suppress 186 \
             -Iruntime -Ikernels -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
# an unpacked Debian tree's libz.so is an absolute link into the machine's own /lib: name the
# shared library itself so the static libz.a (not position-independent) is never picked
ZLIB     := $(if $(DEPS_ROOT),-l:libz.so.1,-lz)
# cairo (plots): flags from pkg-config, or the plain names when it does not know cairo (DEPS_ROOT)
CAIRO_CFLAGS := $(shell pkg-config --cflags cairo 2>/dev/null || echo -I$(if $(DEPS_ROOT),$(DEPS_ROOT))/usr/include/cairo)
CAIRO_LIBS   := $(shell pkg-config --libs cairo 2>/dev/null || echo -lcairo)
# the Jupyter kernel (host only): libzmq sockets, OpenSSL's HMAC
ZMQ_CFLAGS := $(shell pkg-config --cflags libzmq 2>/dev/null)
ZMQ_LIBS   := $(shell pkg-config --libs libzmq 2>/dev/null || echo -lzmq)

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter -Wno-type-limits
CFLAGS   += -std=gnu11 $(OPT) $(ARCH) -g -fPIC -fopenmp $(WARN) -Iruntime -Ikernels -Ilua $(INCDIRS) \
            -DVTL_LUA_DIR='"$(PREFIX)/share/vtl/lua"'
LDLIBS   += $(DEPLIBS) -L$(BLASDIR) -Wl,-rpath,$(BLASDIR) -lopenblas -ldnnl -lcjson -lstb -ljpeg $(CAIRO_LIBS) $(ZLIB) -llua5.4 -lreadline -lm -lpthread -fopenmp

ifeq ($(SAN),1)
  BUILD  := build-san
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

RUNTIME_SRC := $(wildcard runtime/*.c) $(wildcard kernels/cpu/*.c)
BIND_SRC    := $(filter-out lua/host.c lua/repl.c lua/kernel.c,$(wildcard lua/*.c))
HOST_SRC    := lua/host.c lua/repl.c lua/kernel.c
CUDA_SRC    := $(wildcard kernels/cuda/*.cu)

ifeq ($(CUDA_ON),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  CFLAGS  += -DVTL_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart -lstdc++
  # cuDNN from the toolkit folder or the system's; CUDNN_HOME=dir when it lives elsewhere
  ifneq ($(CUDNN_HOME),)
    NVCCFLAGS += -I$(CUDNN_HOME)/include
    LDLIBS    := -L$(CUDNN_HOME)/lib -L$(CUDNN_HOME)/lib64 -Wl,-rpath,$(CUDNN_HOME)/lib -Wl,-rpath,$(CUDNN_HOME)/lib64 $(LDLIBS)
  endif
  CUDA_OBJ := $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_SRC))
  BACKEND_MSG := CUDA backend: on ($(NVCC))
else
  CUDA_OBJ :=
  BACKEND_MSG := CUDA backend: off (CPU-only build)
endif

LIB_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(RUNTIME_SRC) $(BIND_SRC)) $(CUDA_OBJ)
HOST_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(HOST_SRC))
DEPS     := $(LIB_OBJ:.o=.d) $(HOST_OBJ:.o=.d)
VTL_BIN  := $(if $(filter 1,$(SAN)),vtl-san,vtl)
BUILD_DESC := $(strip $(OPT) $(ARCH) -fopenmp $(if $(filter 1,$(SAN)),asan+ubsan) $(if $(filter 1,$(CUDA_ON)),cuda))

# objects are rebuilt when the flags change
FLAGS_TXT := $(strip $(CC) $(CFLAGS) $(LDLIBS) $(BUILD_DESC) $(if $(filter 1,$(CUDA_ON)),$(NVCC) $(NVCCFLAGS)))
ifneq ($(file < $(BUILD)/.flags),$(FLAGS_TXT))
  $(shell mkdir -p $(BUILD))
  $(file > $(BUILD)/.flags,$(FLAGS_TXT))
endif
$(LIB_OBJ) $(HOST_OBJ): $(BUILD)/.flags
# only the files that draw include cairo's headers
$(BUILD)/runtime/plot.o $(BUILD)/lua/lplot.o: CFLAGS += $(CAIRO_CFLAGS)
$(BUILD)/lua/kernel.o: CFLAGS += $(ZMQ_CFLAGS)
# the library is relinked when its list of objects changes (a file added or removed)
ifneq ($(file < $(BUILD)/.objs),$(LIB_OBJ))
  $(file > $(BUILD)/.objs,$(LIB_OBJ))
endif
$(BUILD)/libvtl.a $(BUILD)/vtl/core.so: $(BUILD)/.objs

.PHONY: all setup test test-gpu test-asan test-ref bench bench-train bench-infer bench-loader bench-finetune demo finetune install clean info-backend
all: info-backend $(VTL_BIN) $(BUILD)/vtl/core.so

info-backend:
	@echo "$(BACKEND_MSG)"

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DVTL_BUILD_FLAGS='"$(BUILD_DESC)"' -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libvtl.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $(LIB_OBJ)

$(VTL_BIN): $(HOST_OBJ) $(BUILD)/libvtl.a
	$(CC) $(LDFLAGS) -o $@ $(HOST_OBJ) $(BUILD)/libvtl.a $(LDLIBS) $(ZMQ_LIBS) -lcrypto -Wl,-E

# The Lua C module: links the runtime statically but takes Lua from the host interpreter.
$(BUILD)/vtl/core.so: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -shared -o $@ $(LIB_OBJ) $(filter-out -llua5.4 -lreadline,$(LDLIBS))

setup:
	@bash tools/setup.sh

test: setup all
	@VTL=./$(VTL_BIN) bash tests/run.sh

# On a GPU machine: build with CUDA, run tests/test_cuda.lua and the GPU benchmark against
# PyTorch; logs and a summary ("N passed, N failed") under OUT (default /tmp/vtl-gpu-out).
test-gpu:
	@bash tests/gpu/run.sh

test-asan: setup
	@$(MAKE) --no-print-directory SAN=1 OPT=-O1 all
	@ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
	  VTL=./vtl-san VTL_SAN=1 bash tests/run.sh

bench: setup all
	@bash tests/bench/run.sh

bench-train: setup all
	@bash tests/bench/train.sh

bench-infer: setup all
	@bash tests/bench/infer.sh

bench-loader: setup all
	@bash tests/bench/loader.sh

bench-finetune: setup all
	@bash tests/bench/finetune.sh

demo: setup all
	./$(VTL_BIN) examples/tensor_tour.lua

finetune: setup all
	./$(VTL_BIN) examples/finetune_fashion.lua

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/vtl/lua/vtl $(DESTDIR)$(PREFIX)/lib/lua/5.4/vtl
	install -m 755 $(VTL_BIN) $(DESTDIR)$(PREFIX)/bin/vtl
	cp -r lua/vtl/. $(DESTDIR)$(PREFIX)/share/vtl/lua/vtl/
	install -m 755 $(BUILD)/vtl/core.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/vtl/core.so
	install -d $(DESTDIR)$(PREFIX)/share/lua/5.4
	ln -sfn $(PREFIX)/share/vtl/lua/vtl $(DESTDIR)$(PREFIX)/share/lua/5.4/vtl

clean:
	rm -rf build build-san vtl vtl-san

-include $(DEPS)
