# check.cmake — driver for one compile-fail test (cmake -P).
#
#   cmake -DCOMPILER=<c++> -DSOURCE=<file.cpp> -DFLAGS_FILE=<compile_fail_flags.cmake> [-DEXTRA_FLAGS=...] -P check.cmake
#
# SOURCE starts with one or more lines "// expect: <text>". The test passes only when the compiler rejects
# SOURCE and its output contains each <text>, literally or, failing that, as a CMake regular expression.
cmake_minimum_required(VERSION 3.21)

foreach(_var IN ITEMS COMPILER SOURCE FLAGS_FILE)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "check.cmake: -D${_var}=... is required")
  endif()
endforeach()
include("${FLAGS_FILE}")

# Expected texts: the leading "// expect:" lines.
file(STRINGS "${SOURCE}" _lines)
set(_expects "")
foreach(_line IN LISTS _lines)
  if(_line MATCHES "^[ \t]*//[ \t]*expect:[ \t]*(.*[^ \t\r])[ \t\r]*$")
    list(APPEND _expects "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^[ \t]*(//.*)?$" AND NOT _expects)
    continue()  # leading blank or comment lines before the first expect:
  else()
    break()
  endif()
endforeach()
if(NOT _expects)
  message(FATAL_ERROR "${SOURCE}: the first line must be '// expect: <text the compiler error must contain>'")
endif()

set(_args -std=c++20 -fsyntax-only -fdiagnostics-color=never)
if(EXTRA_FLAGS)
  separate_arguments(_extra UNIX_COMMAND "${EXTRA_FLAGS}")
  list(APPEND _args ${_extra})
endif()
list(REMOVE_DUPLICATES COMPILE_FAIL_INCLUDES)
foreach(_inc IN LISTS COMPILE_FAIL_INCLUDES)
  if(_inc AND NOT _inc IN_LIST COMPILE_FAIL_IMPLICIT_INCLUDES)
    list(APPEND _args "-I${_inc}")
  endif()
endforeach()
list(REMOVE_DUPLICATES COMPILE_FAIL_DEFINITIONS)
foreach(_def IN LISTS COMPILE_FAIL_DEFINITIONS)
  if(_def)
    list(APPEND _args "-D${_def}")
  endif()
endforeach()
list(APPEND _args "${SOURCE}")

set(ENV{LC_ALL} C)  # plain ASCII quotes in diagnostics
execute_process(COMMAND "${COMPILER}" ${_args}
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
string(REPLACE ";" " " _cmdline "${COMPILER};${_args}")

message("${_cmdline}\n${_out}")  # shown by ctest --output-on-failure when the test fails
if(_rc EQUAL 0)
  message(FATAL_ERROR "compile_fail: ${SOURCE} compiled, but it must not")
endif()

set(_missing "")
foreach(_expect IN LISTS _expects)
  string(FIND "${_out}" "${_expect}" _at)
  if(_at GREATER_EQUAL 0)
    continue()
  endif()
  # Not there literally: try it as a regular expression (an invalid one makes this test fail, loudly).
  message(STATUS "'${_expect}' not found literally; trying it as a regular expression")
  if(NOT _out MATCHES "${_expect}")
    list(APPEND _missing "${_expect}")
  endif()
endforeach()

if(_missing)
  string(REPLACE ";" "'\n  '" _missing "${_missing}")
  message(FATAL_ERROR "compile_fail: ${SOURCE} failed to compile, but the output lacks:\n  '${_missing}'")
endif()
message(STATUS "compile_fail: ${SOURCE} was rejected as expected")
