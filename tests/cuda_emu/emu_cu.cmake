# emu_cu.cmake — turns a .cu file into C++ that the CUDA emulation
# (tests/cuda_emu) compiles: every launch
#     kernel<<<grid, block, shmem, stream>>>(args);
# becomes
#     DV_EMU_LAUNCH(kernel, dv_emu_cfg(grid, block, shmem, stream), args);
# and a #line directive keeps diagnostics and __FILE__ pointing at the
# original. Launches must be statements of their own, with no ';' inside
# (Dive's are). Run as: cmake -DIN=file.cu -DOUT=file.cpp -P emu_cu.cmake
file(READ "${IN}" src)
string(REGEX REPLACE
  "([A-Za-z_][A-Za-z0-9_]*)[ \t]*<<<([^;]*)>>>[ \t\r\n]*\\(([^;]*)\\)[ \t]*;"
  "DV_EMU_LAUNCH(\\1, dv_emu_cfg(\\2), \\3);" out "${src}")
string(FIND "${out}" ">>>(" left)
if(NOT left EQUAL -1)
  message(FATAL_ERROR "${IN}: a <<<launch>>> emu_cu.cmake could not rewrite")
endif()
file(WRITE "${OUT}" "#line 1 \"${IN}\"\n${out}")
