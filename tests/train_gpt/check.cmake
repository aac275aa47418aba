# check.cmake — runs examples/05_train_gpt's train_gpt (or train_gpt_cuda) once and checks what it did (a CTest
# driver, cmake -P).
#
#   cmake -DTRAIN_GPT=<binary> -DMODE=<mode> "-DARGS=<flags, as a shell would split them>" [mode's variables]
#         -P check.cmake
#
# MODE
#   run       exit 0; with JSON=<file> (passed as --json) the report is checked: mesh, steps, eval and one peak
#             per rank; with EXPECT=<regex> the output must match it; with FIRST_LOSS=<x> the first step's loss,
#             and with FIRST_GRAD_NORM=<x> its gradient norm, equals x within TOLERANCE_PPM.
#   parity    as run, then each step's loss equals REFERENCE's (a JSON report of the same steps) within
#             TOLERANCE_PPM parts per million of it, and so do the eval losses.
#   eval      as run (with JSON), then the eval loss equals EXPECTED_LOSS, or the eval loss of the report
#             EXPECTED_FROM, within TOLERANCE_PPM.
#   fail      a non-zero exit before any rank starts (nothing on stdout), with one line on stderr matching EXPECT.
# Before the run, TRUNCATE=<file> writes the first TRUNCATE_BYTES bytes of TRUNCATE_FROM there, and EMPTY=<file>
# writes an empty file.
#
# CUDA_BUILD_DIR=<build dir>: TRAIN_GPT is the CUDA build (train_gpt_cuda) of that build directory. When the binary
# does not exist, or its run fails because there is no GPU (cuda::Context's "no CUDA device is available"), the check
# prints "SKIPPED: <binary> is not built (cmake --build ...)" or "SKIPPED: no GPU: <the error>" and stops without
# passing: the test's SKIP_REGULAR_EXPRESSION makes CTest report the skip. Any other outcome is checked as above.
cmake_minimum_required(VERSION 3.21)

foreach(_var TRAIN_GPT MODE)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "check.cmake: ${_var} is not set")
  endif()
endforeach()

# ---------------------------------------------------------------------------------------------------------------------
# Numbers: CMake's math() has 64-bit integers only, so decimals are compared as fixed point with 10 fraction digits.

# <out> = round-towards-zero(<text> * 10^10), for a JSON number such as 4.746058106422424, -0.5 or 1.2345e-05.
function(_fixed text out)
  if(NOT text MATCHES "^(-?)([0-9]+)(\\.([0-9]+))?([eE]([-+]?[0-9]+))?$")
    message(FATAL_ERROR "check.cmake: '${text}' is not a number")
  endif()
  set(_sign "${CMAKE_MATCH_1}")
  set(_digits "${CMAKE_MATCH_2}${CMAKE_MATCH_4}")
  string(LENGTH "${CMAKE_MATCH_4}" _fraction)
  set(_exponent "${CMAKE_MATCH_6}")
  if(_exponent STREQUAL "")
    set(_exponent 0)
  endif()
  string(REGEX REPLACE "^\\+" "" _exponent "${_exponent}")
  math(EXPR _shift "10 + ${_exponent} - ${_fraction}")  # value * 10^10 = digits * 10^shift
  if(_shift GREATER 0)
    string(REPEAT "0" ${_shift} _zeros)
    string(APPEND _digits "${_zeros}")
  elseif(_shift LESS 0)
    string(LENGTH "${_digits}" _length)
    math(EXPR _keep "${_length} + ${_shift}")
    if(_keep LESS_EQUAL 0)
      set(_digits 0)
    else()
      string(SUBSTRING "${_digits}" 0 ${_keep} _digits)
    endif()
  endif()
  string(REGEX REPLACE "^0+" "" _digits "${_digits}")
  if(_digits STREQUAL "")
    set(_digits 0)
  endif()
  string(LENGTH "${_digits}" _length)
  if(_length GREATER 18)
    message(FATAL_ERROR "check.cmake: '${text}' is too large to compare")
  endif()
  set(${out} "${_sign}${_digits}" PARENT_SCOPE)
endfunction()

# Fails unless |got - want| <= ppm * 10^-6 * |want|; `what` names the figure.
function(_expect_close what got want ppm)
  _fixed("${got}" _g)
  _fixed("${want}" _w)
  math(EXPR _diff "${_g} - ${_w}")
  if(_diff LESS 0)
    math(EXPR _diff "-(${_diff})")
  endif()
  set(_scale "${_w}")
  if(_scale LESS 0)
    math(EXPR _scale "-(${_scale})")
  endif()
  math(EXPR _lhs "${_diff} * 1000000")
  math(EXPR _rhs "${ppm} * ${_scale}")
  if(_lhs GREATER _rhs)
    message(FATAL_ERROR "${what}: ${got}, expected ${want} within ${ppm} ppm")
  endif()
endfunction()

# ---------------------------------------------------------------------------------------------------------------------
# Run.

# Prints "SKIPPED: <why>" as it is (CTest's skip pattern; message(FATAL_ERROR) would rewrap it) and stops with an
# error, so that without that pattern the test fails rather than passes.
function(_skip why)
  message(NOTICE "SKIPPED: ${why}")
  message(FATAL_ERROR "check.cmake: not run (SKIPPED above)")
endfunction()

get_filename_component(_program "${TRAIN_GPT}" NAME_WE)
if(DEFINED CUDA_BUILD_DIR AND NOT EXISTS "${TRAIN_GPT}")
  _skip("${_program} is not built (cmake --build ${CUDA_BUILD_DIR} --target ${_program})")
endif()

if(DEFINED TRUNCATE)  # CMake cannot write arbitrary bytes; head can
  execute_process(COMMAND head -c ${TRUNCATE_BYTES} "${TRUNCATE_FROM}" OUTPUT_FILE "${TRUNCATE}" RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "check.cmake: cannot write the first ${TRUNCATE_BYTES} bytes of ${TRUNCATE_FROM} to ${TRUNCATE}")
  endif()
endif()
if(DEFINED EMPTY)
  file(WRITE "${EMPTY}" "")
endif()

separate_arguments(_args UNIX_COMMAND "${ARGS}")
if(DEFINED JSON)
  file(REMOVE "${JSON}")
  list(APPEND _args --json "${JSON}")
endif()
execute_process(COMMAND "${TRAIN_GPT}" ${_args} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
string(REPLACE ";" " " _shown "${_args}")
message(STATUS "${_program} ${_shown}\n${_out}${_err}")
if(DEFINED CUDA_BUILD_DIR AND NOT _rc EQUAL 0 AND _err MATCHES "cuda::Context: no CUDA device is available[^\n]*")
  _skip("no GPU: ${CMAKE_MATCH_0}")
endif()

if(MODE STREQUAL "fail")
  if(_rc EQUAL 0)
    message(FATAL_ERROR "${_program} succeeded; expected it to fail with '${EXPECT}'")
  endif()
  if(NOT _err MATCHES "${EXPECT}")
    message(FATAL_ERROR "${_program} failed (${_rc}) without the message '${EXPECT}'")
  endif()
  if(NOT _out STREQUAL "")
    message(FATAL_ERROR "${_program} printed to stdout before failing: its ranks had started")
  endif()
  string(REGEX MATCHALL "\n" _lines "${_err}")
  list(LENGTH _lines _lines)
  if(NOT _lines EQUAL 1)
    message(FATAL_ERROR "${_program} wrote ${_lines} lines to stderr, not one message")
  endif()
  return()
endif()

if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "${_program} exited with ${_rc}")
endif()
if(DEFINED EXPECT AND NOT "${_out}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "the output does not match '${EXPECT}'")
endif()
if(NOT DEFINED JSON)
  return()
endif()

# ---------------------------------------------------------------------------------------------------------------------
# The JSON report.

file(READ "${JSON}" _json)
string(JSON _dp GET "${_json}" mesh dp)
string(JSON _pp GET "${_json}" mesh pp)
string(JSON _tp GET "${_json}" mesh tp)
math(EXPR _ranks "${_dp} * ${_pp} * ${_tp}")
foreach(_key zero schedule precision)  # present (string(JSON) fails on a missing key)
  string(JSON _value GET "${_json}" ${_key})
endforeach()
string(JSON _peaks LENGTH "${_json}" peak_bytes_per_rank)
string(JSON _categories LENGTH "${_json}" bytes_by_category)
if(NOT _peaks EQUAL _ranks OR NOT _categories EQUAL _ranks)
  message(FATAL_ERROR "${_peaks} peak_bytes_per_rank and ${_categories} bytes_by_category for ${_ranks} ranks")
endif()
foreach(_category parameters gradients optimizer activations communication workspace)
  string(JSON _bytes GET "${_json}" bytes_by_category 0 ${_category})
endforeach()
string(JSON _eval_loss GET "${_json}" eval loss)
string(JSON _accuracy GET "${_json}" eval accuracy)
string(JSON _steps LENGTH "${_json}" steps)

if(MODE STREQUAL "parity")
  file(READ "${REFERENCE}" _reference)
  string(JSON _want_steps LENGTH "${_reference}" steps)
  if(NOT _steps EQUAL _want_steps OR _steps EQUAL 0)
    message(FATAL_ERROR "${_steps} steps, the reference has ${_want_steps}")
  endif()
  math(EXPR _last "${_steps} - 1")
  foreach(_i RANGE ${_last})
    string(JSON _got GET "${_json}" steps ${_i} loss)
    string(JSON _want GET "${_reference}" steps ${_i} loss)
    math(EXPR _step "${_i} + 1")
    _expect_close("loss of step ${_step}" "${_got}" "${_want}" "${TOLERANCE_PPM}")
  endforeach()
  string(JSON _want GET "${_reference}" eval loss)
  _expect_close("eval loss" "${_eval_loss}" "${_want}" "${TOLERANCE_PPM}")
elseif(MODE STREQUAL "eval")
  if(DEFINED EXPECTED_FROM)
    file(READ "${EXPECTED_FROM}" _reference)
    string(JSON EXPECTED_LOSS GET "${_reference}" eval loss)
  endif()
  _expect_close("eval loss" "${_eval_loss}" "${EXPECTED_LOSS}" "${TOLERANCE_PPM}")
elseif(MODE STREQUAL "run")
  if(DEFINED FIRST_LOSS)
    string(JSON _got GET "${_json}" steps 0 loss)
    _expect_close("loss of step 1" "${_got}" "${FIRST_LOSS}" "${TOLERANCE_PPM}")
  endif()
  if(DEFINED FIRST_GRAD_NORM)
    string(JSON _got GET "${_json}" steps 0 grad_norm)
    _expect_close("gradient norm of step 1" "${_got}" "${FIRST_GRAD_NORM}" "${TOLERANCE_PPM}")
  endif()
else()
  message(FATAL_ERROR "check.cmake: MODE '${MODE}' is not run, parity, eval or fail")
endif()
