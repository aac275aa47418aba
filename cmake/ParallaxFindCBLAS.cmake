# ParallaxFindCBLAS.cmake — find a BLAS that provides the CBLAS interface (OpenBLAS preferred).
#
# parallax_find_cblas() sets, in the caller's scope:
#   PARALLAX_HAS_CBLAS          ON when BLAS::BLAS links and <cblas.h> compiles against it
#   PARALLAX_BLAS_VENDOR        the BLA_VENDOR that found it (OpenBLAS or All), for the package config
#   PARALLAX_CBLAS_INCLUDE_DIR  where cblas.h is when it is not on the default include path, else empty
include_guard(GLOBAL)

function(parallax_find_cblas)
  set(PARALLAX_HAS_CBLAS OFF PARENT_SCOPE)
  set(PARALLAX_BLAS_VENDOR "" PARENT_SCOPE)
  set(PARALLAX_CBLAS_INCLUDE_DIR "" PARENT_SCOPE)

  # Try OpenBLAS first, then whatever BLAS the system has (a user's BLA_VENDOR wins).
  if(DEFINED BLA_VENDOR AND NOT BLA_VENDOR STREQUAL "")
    set(_vendors "${BLA_VENDOR}")
  else()
    set(_vendors OpenBLAS All)
  endif()
  foreach(_vendor IN LISTS _vendors)
    set(BLA_VENDOR "${_vendor}")
    find_package(BLAS QUIET)
    if(BLAS_FOUND AND TARGET BLAS::BLAS)
      set(_found_vendor "${_vendor}")
      break()
    endif()
  endforeach()
  if(NOT _found_vendor)
    message(STATUS "parallax: no BLAS found; host GEMM uses the built-in blocked loop")
    return()
  endif()

  # cblas.h: on the default path, or next to the library (e.g. include/openblas, include/<arch>/openblas-pthread).
  include(CheckIncludeFileCXX)
  include(CheckCXXSourceCompiles)
  include(CMakePushCheckState)
  set(_include_dir "")
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_QUIET ON)
  check_include_file_cxx(cblas.h PARALLAX_CBLAS_H_ON_DEFAULT_PATH)
  cmake_pop_check_state()
  if(NOT PARALLAX_CBLAS_H_ON_DEFAULT_PATH)
    list(GET BLAS_LIBRARIES 0 _first_lib)
    get_filename_component(_libdir "${_first_lib}" DIRECTORY)
    find_path(PARALLAX_CBLAS_INCLUDE_DIR_SEARCH cblas.h
      HINTS "${_libdir}/../include" "${_libdir}/../../include"
      PATH_SUFFIXES openblas openblas-pthread openblas-openmp openblas-serial
                    x86_64-linux-gnu/openblas-pthread aarch64-linux-gnu/openblas-pthread)
    mark_as_advanced(PARALLAX_CBLAS_INCLUDE_DIR_SEARCH)
    if(NOT PARALLAX_CBLAS_INCLUDE_DIR_SEARCH)
      message(STATUS "parallax: BLAS found (${_found_vendor}) but cblas.h was not; host GEMM uses the built-in loop")
      return()
    endif()
    set(_include_dir "${PARALLAX_CBLAS_INCLUDE_DIR_SEARCH}")
  endif()

  # The library must export the CBLAS symbols, not just the Fortran ones.
  cmake_push_check_state(RESET)
  set(CMAKE_REQUIRED_QUIET ON)
  set(CMAKE_REQUIRED_LIBRARIES ${BLAS_LIBRARIES} ${BLAS_LINKER_FLAGS})
  if(_include_dir)
    set(CMAKE_REQUIRED_INCLUDES "${_include_dir}")
  endif()
  check_cxx_source_compiles([[
    #include <cblas.h>
    int main() {
      float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {};
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
      return c[0] == 1.0f ? 0 : 1;
    }]] PARALLAX_CBLAS_LINKS)
  cmake_pop_check_state()
  if(NOT PARALLAX_CBLAS_LINKS)
    message(STATUS "parallax: BLAS found (${_found_vendor}) but it does not provide cblas_sgemm; host GEMM uses the built-in loop")
    return()
  endif()

  message(STATUS "parallax: host GEMM uses CBLAS (${_found_vendor}: ${BLAS_LIBRARIES})")
  set(PARALLAX_HAS_CBLAS ON PARENT_SCOPE)
  set(PARALLAX_BLAS_VENDOR "${_found_vendor}" PARENT_SCOPE)
  set(PARALLAX_CBLAS_INCLUDE_DIR "${_include_dir}" PARENT_SCOPE)
endfunction()
