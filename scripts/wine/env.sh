# Sourced by RainMaker's Windows scripts: the environment that builds Windows programs with
# Debian's compiler (-Zbuild-std, since rustup cannot fetch the Windows target here) and runs
# them under Wine. See README, "Building for Windows on Linux".
export RUSTC=/usr/bin/rustc
export RUSTC_BOOTSTRAP=1
# Beside the Linux build cache, never inside the clone; kept between runs so the standard
# library is only rebuilt when the compiler changes.
export CARGO_TARGET_DIR="${RAINMAKER_WINDOWS_TARGET_DIR:-$HOME/.cache/rainmaker-target-win}"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/scripts/wine/run"
export WINEPREFIX="${WINEPREFIX:-$HOME/.cache/rainmaker-wine}"
export WINEDEBUG="${WINEDEBUG:--all}"
WINDOWS_TARGET=x86_64-pc-windows-gnu
WINDOWS_CARGO=/usr/bin/cargo
