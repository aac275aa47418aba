# FindNCCL.cmake — find the NVIDIA Collective Communications Library.
#
# Inputs (all optional):
#   NCCL_ROOT / $ENV{NCCL_ROOT}   an NCCL install prefix (include/nccl.h, lib/libnccl.so)
#   NCCL_INCLUDE_DIR, NCCL_LIBRARY cache entries, to point at the files directly
#   NCCL_USE_STATIC_LIBS           prefer libnccl_static.a
# The CUDA toolkit directories (from find_package(CUDAToolkit), when already run) are searched too, and last the
# NCCL of a Python wheel (nvidia-nccl-cu12/-cu13, which PyTorch installs): site-packages/nvidia/nccl/{include,lib},
# found by asking NCCL_PYTHON_EXECUTABLE (default: python3 on PATH) where `nvidia.nccl` is. Its library is only
# libnccl.so.2, a name searched after nccl and nccl_static.
#
# Outputs:
#   NCCL_FOUND, NCCL_VERSION (MAJOR.MINOR.PATCH from nccl.h), NCCL_INCLUDE_DIRS, NCCL_LIBRARIES
#   imported target NCCL::NCCL

set(_nccl_hints)
foreach(_nccl_root IN ITEMS "${NCCL_ROOT}" "$ENV{NCCL_ROOT}" "$ENV{NCCL_HOME}" "$ENV{NCCL_DIR}")
  if(_nccl_root)
    list(APPEND _nccl_hints "${_nccl_root}")
  endif()
endforeach()

set(_nccl_include_paths)
set(_nccl_library_paths)
if(CUDAToolkit_INCLUDE_DIRS)
  list(APPEND _nccl_include_paths ${CUDAToolkit_INCLUDE_DIRS})
endif()
if(CUDAToolkit_LIBRARY_DIR)
  list(APPEND _nccl_library_paths "${CUDAToolkit_LIBRARY_DIR}")
endif()
if(CUDAToolkit_LIBRARY_ROOT)
  list(APPEND _nccl_hints "${CUDAToolkit_LIBRARY_ROOT}")
endif()
foreach(_nccl_cuda IN ITEMS "$ENV{CUDA_HOME}" "$ENV{CUDA_PATH}" /usr/local/cuda)
  if(_nccl_cuda)
    list(APPEND _nccl_include_paths "${_nccl_cuda}/include")
    list(APPEND _nccl_library_paths "${_nccl_cuda}/lib64" "${_nccl_cuda}/lib")
  endif()
endforeach()

# The Python wheel's directory, searched after everything else.
set(_nccl_wheel "")
if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
  find_program(NCCL_PYTHON_EXECUTABLE NAMES python3 python DOC "Python asked where a wheel's NCCL is")
  mark_as_advanced(NCCL_PYTHON_EXECUTABLE)
  if(NCCL_PYTHON_EXECUTABLE)
    execute_process(COMMAND "${NCCL_PYTHON_EXECUTABLE}" -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])"
                    OUTPUT_VARIABLE _nccl_wheel_dir OUTPUT_STRIP_TRAILING_WHITESPACE
                    RESULT_VARIABLE _nccl_wheel_rc ERROR_QUIET)
    if(_nccl_wheel_rc EQUAL 0 AND IS_DIRECTORY "${_nccl_wheel_dir}")
      set(_nccl_wheel "${_nccl_wheel_dir}")
    endif()
  endif()
endif()

find_path(NCCL_INCLUDE_DIR
  NAMES nccl.h
  HINTS ${_nccl_hints}
  PATH_SUFFIXES include
  PATHS ${_nccl_include_paths} ${_nccl_wheel}
  DOC "Directory holding nccl.h")

if(NCCL_USE_STATIC_LIBS)
  set(_nccl_names nccl_static nccl libnccl.so.2)
else()
  set(_nccl_names nccl nccl_static libnccl.so.2)
endif()
find_library(NCCL_LIBRARY
  NAMES ${_nccl_names}
  HINTS ${_nccl_hints}
  PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu lib/aarch64-linux-gnu
  PATHS ${_nccl_library_paths} ${_nccl_wheel}
  DOC "The NCCL library")

if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_version_lines
       REGEX "^#define[ \t]+NCCL_(MAJOR|MINOR|PATCH)[ \t]+[0-9]+")
  foreach(_nccl_part IN ITEMS MAJOR MINOR PATCH)
    set(NCCL_VERSION_${_nccl_part} "")
    foreach(_nccl_line IN LISTS _nccl_version_lines)
      if(_nccl_line MATCHES "^#define[ \t]+NCCL_${_nccl_part}[ \t]+([0-9]+)")
        set(NCCL_VERSION_${_nccl_part} "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endforeach()
  if(NOT NCCL_VERSION_MAJOR STREQUAL "" AND NOT NCCL_VERSION_MINOR STREQUAL "" AND NOT NCCL_VERSION_PATCH STREQUAL "")
    set(NCCL_VERSION "${NCCL_VERSION_MAJOR}.${NCCL_VERSION_MINOR}.${NCCL_VERSION_PATCH}")
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL
  REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
  VERSION_VAR NCCL_VERSION)

if(NCCL_FOUND)
  set(NCCL_INCLUDE_DIRS "${NCCL_INCLUDE_DIR}")
  set(NCCL_LIBRARIES "${NCCL_LIBRARY}")
  if(NOT TARGET NCCL::NCCL)
    add_library(NCCL::NCCL UNKNOWN IMPORTED)
    set_target_properties(NCCL::NCCL PROPERTIES
      IMPORTED_LOCATION "${NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
    if(NCCL_LIBRARY MATCHES "_static\\.a$" AND TARGET CUDA::cudart_static)
      set_property(TARGET NCCL::NCCL APPEND PROPERTY INTERFACE_LINK_LIBRARIES CUDA::cudart_static)
    endif()
  endif()
endif()

mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
unset(_nccl_hints)
unset(_nccl_include_paths)
unset(_nccl_library_paths)
unset(_nccl_names)
unset(_nccl_version_lines)
unset(_nccl_wheel)
unset(_nccl_wheel_dir)
unset(_nccl_wheel_rc)
