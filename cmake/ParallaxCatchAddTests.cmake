# ParallaxCatchAddTests.cmake — the Catch2 v2 test-discovery script (run after each test binary is built),
# replacing Catch2 v2's CatchAddTests.cmake, which mis-splits test names that contain '[', ']' or ';'
# (e.g. "uniform stays in [lo, hi)" swallowed every later test of the binary into one bogus CTest test
# that matched nothing and passed).
#
# Same inputs as CatchAddTests.cmake (-D TEST_TARGET, TEST_EXECUTABLE, TEST_EXECUTOR, TEST_WORKING_DIR,
# TEST_SPEC, TEST_EXTRA_ARGS, TEST_PROPERTIES, TEST_PREFIX, TEST_SUFFIX, TEST_LIST, TEST_REPORTER,
# TEST_OUTPUT_DIR, TEST_OUTPUT_PREFIX, TEST_OUTPUT_SUFFIX, CTEST_FILE); writes CTEST_FILE.
cmake_minimum_required(VERSION 3.21)

set(script "")
function(add_command name)
  set(_args "")
  math(EXPR _last "${ARGC} - 1")
  if(_last GREATER_EQUAL 1)
    foreach(_n RANGE 1 ${_last})
      set(_arg "${ARGV${_n}}")
      if(_arg MATCHES "[^-./:a-zA-Z0-9_]" OR _arg STREQUAL "")
        string(APPEND _args " [==[${_arg}]==]")
      else()
        string(APPEND _args " ${_arg}")
      endif()
    endforeach()
  endif()
  set(script "${script}${name}(${_args})\n" PARENT_SCOPE)
endfunction()

if(NOT EXISTS "${TEST_EXECUTABLE}")
  message(FATAL_ERROR "Test executable '${TEST_EXECUTABLE}' does not exist")
endif()
execute_process(
  COMMAND ${TEST_EXECUTOR} "${TEST_EXECUTABLE}" ${TEST_SPEC} --list-test-names-only
  OUTPUT_VARIABLE output
  ERROR_VARIABLE errors
  RESULT_VARIABLE result
  WORKING_DIRECTORY "${TEST_WORKING_DIR}")
if(NOT result MATCHES "^[0-9]+$")
  message(FATAL_ERROR "Error listing the tests of '${TEST_EXECUTABLE}': ${result}\n${output}\n${errors}")
endif()

# Split into lines without CMake list semantics: protect ';', '[' and ']' first.
string(REPLACE ";" "<PX_SEMICOLON>" output "${output}")
string(REPLACE "[" "<PX_LBRACKET>" output "${output}")
string(REPLACE "]" "<PX_RBRACKET>" output "${output}")
string(REPLACE "\r" "" output "${output}")
string(REPLACE "\n" ";" lines "${output}")

set(reporter_args "")
if(TEST_REPORTER)
  set(reporter_args --reporter "${TEST_REPORTER}")
endif()
set(output_dir "${TEST_OUTPUT_DIR}")
if(output_dir AND NOT IS_ABSOLUTE "${output_dir}")
  set(output_dir "${TEST_WORKING_DIR}/${output_dir}")
endif()
if(output_dir)
  file(MAKE_DIRECTORY "${output_dir}")
endif()

set(tests "")  # "[==[name]==] [==[name]==] ...", for set(${TEST_LIST} ...)
foreach(line IN LISTS lines)
  string(REPLACE "<PX_SEMICOLON>" ";" test "${line}")
  string(REPLACE "<PX_LBRACKET>" "[" test "${test}")
  string(REPLACE "<PX_RBRACKET>" "]" test "${test}")
  if(test STREQUAL "")
    continue()
  endif()
  if(test MATCHES "^\"(#.*)\"$")  # Catch quotes names that start with '#'
    set(test "${CMAKE_MATCH_1}")
  endif()

  # The name as a Catch test spec: escape what the spec parser would interpret.
  set(spec "${test}")
  foreach(char IN ITEMS "\\" "," "[" "]" "\"")
    string(REPLACE "${char}" "\\${char}" spec "${spec}")
  endforeach()

  set(ctest_name "${TEST_PREFIX}${test}${TEST_SUFFIX}")
  set(out_args "")
  if(output_dir)
    string(REGEX REPLACE "[^A-Za-z0-9_]" "_" clean "${test}")
    set(out_args --out "${output_dir}/${TEST_OUTPUT_PREFIX}${clean}${TEST_OUTPUT_SUFFIX}")
  endif()
  add_command(add_test "${ctest_name}" ${TEST_EXECUTOR} "${TEST_EXECUTABLE}" "${spec}" ${TEST_EXTRA_ARGS}
              ${reporter_args} ${out_args})
  add_command(set_tests_properties "${ctest_name}" PROPERTIES WORKING_DIRECTORY "${TEST_WORKING_DIR}"
              ${TEST_PROPERTIES})
  string(APPEND tests " [==[${ctest_name}]==]")
endforeach()

if(NOT tests)
  message(WARNING "Test executable '${TEST_EXECUTABLE}' contains no tests")
endif()
string(APPEND script "set(${TEST_LIST}${tests})\n")
file(WRITE "${CTEST_FILE}" "${script}")
