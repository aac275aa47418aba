# install.cmake — install a parallax build tree into a fresh prefix (cmake -P; no build step).
#   cmake -DBUILD_DIR=<build> -DPREFIX=<prefix> [-DCONFIG=<config>] -P install.cmake
file(REMOVE_RECURSE "${PREFIX}")
set(_config "")
if(CONFIG)
  set(_config --config "${CONFIG}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${_config}
                RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${_rc})")
endif()
foreach(_file IN ITEMS include/parallax/version.hpp lib/cmake/parallax/parallaxConfig.cmake
                       lib/cmake/parallax/parallaxConfigVersion.cmake lib/cmake/parallax/parallaxTargets.cmake)
  if(NOT EXISTS "${PREFIX}/${_file}")
    message(FATAL_ERROR "install: ${PREFIX}/${_file} is missing")
  endif()
endforeach()
