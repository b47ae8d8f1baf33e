# Cross toolchain for AArch64 Linux (Debian gcc-aarch64-linux-gnu + :arm64
# -dev packages). Binaries run under qemu-user; ctest uses the emulator.
#   cmake -S . -B build-arm -DCMAKE_TOOLCHAIN_FILE=.ci/aarch64.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config must see the arm64 .pc files only (Debian multiarch layout).
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "")

# No -L: the guest's loader and libraries come from the host's multiarch
# arm64 packages (/lib/ld-linux-aarch64.so.1, /usr/lib/aarch64-linux-gnu).
# With -L /usr/aarch64-linux-gnu (the cross toolchain's own libc) the same
# tests ran about 15x slower under qemu 7.2.
set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64")
