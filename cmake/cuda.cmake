# MSTPLAN_CUDA = AUTO | ON | OFF  ->  MSTPLAN_HAVE_CUDA = ON | OFF
#
# AUTO enables the CUDA language when a CUDA compiler is found (nvcc on PATH or CUDACXX),
# ON requires it, OFF never looks. Nothing in planner/ depends on the outcome.
string(TOUPPER "${MSTPLAN_CUDA}" _mstplan_cuda)
if(NOT _mstplan_cuda MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "MSTPLAN_CUDA must be AUTO, ON or OFF, got '${MSTPLAN_CUDA}'")
endif()

set(MSTPLAN_HAVE_CUDA OFF)
if(NOT _mstplan_cuda STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # A100 (80), A10G/RTX-3090 (86), L40S/RTX-4090 (89), H100/H200 (90).
      set(CMAKE_CUDA_ARCHITECTURES 80 86 89 90)
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Static)   # the binary runs where only the driver is installed
    enable_language(CUDA)
    # CMake 3.25 knows nvcc's dialect flags only up to C++17, while nvcc 13 defaults to C++20:
    # teach it the C++20 spelling (nvcc 12 and later accept it) and use it.
    if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(MSTPLAN_HAVE_CUDA ON)
  elseif(_mstplan_cuda STREQUAL "ON")
    message(FATAL_ERROR "MSTPLAN_CUDA=ON but no CUDA compiler was found (put nvcc on PATH or set CUDACXX)")
  else()
    message(STATUS "No CUDA compiler found: building without the CUDA backend (MSTPLAN_CUDA=AUTO)")
  endif()
endif()
