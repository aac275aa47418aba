# ParallaxDevFlags.cmake — warnings and sanitizers for parallax's own tests, examples and benchmarks.
# Never applied to the exported targets: users choose their own flags.
#
#   parallax_dev_flags(<target> [NO_SANITIZE])
#
# Sets properties directly (no target_link_libraries), so it also works on targets that another
# CMakeLists.txt created with either target_link_libraries signature.
include_guard(GLOBAL)

set(_parallax_cxx_warnings -Wall -Wextra -Wpedantic)
if(PARALLAX_WERROR)
  list(APPEND _parallax_cxx_warnings -Werror)
endif()

set(_parallax_sanitize_flags "")
if(PARALLAX_SANITIZE STREQUAL "address")
  set(_parallax_sanitize_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
elseif(PARALLAX_SANITIZE STREQUAL "thread")
  set(_parallax_sanitize_flags -fsanitize=thread -fno-omit-frame-pointer)
endif()

function(parallax_dev_flags target)
  cmake_parse_arguments(PARSE_ARGV 1 _arg "NO_SANITIZE" "" "")
  get_target_property(_type ${target} TYPE)
  if(_type STREQUAL "INTERFACE_LIBRARY" OR _type STREQUAL "UTILITY")
    return()
  endif()
  set_property(TARGET ${target} APPEND PROPERTY COMPILE_OPTIONS
    "$<$<COMPILE_LANGUAGE:CXX>:${_parallax_cxx_warnings}>"
    "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>")
  set_property(TARGET ${target} PROPERTY CXX_EXTENSIONS OFF)
  if(_parallax_sanitize_flags AND NOT _arg_NO_SANITIZE)
    # Only C++ translation units and C++-linked binaries: nvcc does not take -fsanitize.
    set_property(TARGET ${target} APPEND PROPERTY COMPILE_OPTIONS
      "$<$<COMPILE_LANGUAGE:CXX>:${_parallax_sanitize_flags}>")
    if(NOT _type STREQUAL "OBJECT_LIBRARY" AND NOT _type STREQUAL "STATIC_LIBRARY")
      set_property(TARGET ${target} APPEND PROPERTY LINK_OPTIONS
        "$<$<LINK_LANGUAGE:CXX>:${_parallax_sanitize_flags}>")
    endif()
  endif()
endfunction()
