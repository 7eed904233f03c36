# spec/install_check.cmake: `cmake --install` gives a working provider-host (ctest runs this).
set(prefix ${BUILD_DIR}/install-check)
file(REMOVE_RECURSE ${prefix})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix}
  RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
# Run from elsewhere so nothing can come from the source tree by accident.
execute_process(COMMAND ${prefix}/bin/provider-host demo WORKING_DIRECTORY /
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "installed provider-host demo failed (${rc}):\n${out}\n${err}")
endif()
execute_process(COMMAND ${prefix}/bin/provider-host -e
  "assert(require('host.core.http').request); print(require('host.core.sys').runtime_root())"
  WORKING_DIRECTORY / RESULT_VARIABLE rc OUTPUT_VARIABLE root ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT root MATCHES "install-check/share/provider-host")
  message(FATAL_ERROR "installed runtime not used (${rc}): ${root} ${err}")
endif()
# ph-sandbox-helper (copied into sandboxes) is installed under <libdir>/provider-host, and the
# installed binary finds it there.
file(GLOB_RECURSE helper ${prefix}/*/provider-host/ph-sandbox-helper)
if(NOT helper)
  message(FATAL_ERROR "ph-sandbox-helper was not installed under <libdir>/provider-host")
endif()
execute_process(COMMAND ${prefix}/bin/provider-host -e
  "print((assert(require('host.sandbox_helper').path())))"
  WORKING_DIRECTORY / RESULT_VARIABLE rc OUTPUT_VARIABLE found ERROR_VARIABLE err)
string(STRIP "${found}" found)
if(NOT rc EQUAL 0 OR NOT found STREQUAL helper)
  message(FATAL_ERROR "installed provider-host does not find ph-sandbox-helper (${rc}): "
    "${found} ${err}")
endif()
execute_process(COMMAND ${helper} --version RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0 OR NOT out MATCHES "^ph-sandbox-helper ")
  message(FATAL_ERROR "installed ph-sandbox-helper does not run (${rc}): ${out}")
endif()
# The shim's addon (built when Node-API headers were found) is installed beside the network
# module, and `package` run from the installed binary ships it.
if(EXISTS ${BUILD_DIR}/execve.node)
  file(GLOB_RECURSE addon ${prefix}/*/provider-host/execve.node)
  if(NOT addon)
    message(FATAL_ERROR "execve.node was built but not installed")
  endif()
  execute_process(COMMAND ${prefix}/bin/provider-host package local --out ${prefix}/pkg
    WORKING_DIRECTORY / RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT EXISTS ${prefix}/pkg/lib/execve.node)
    message(FATAL_ERROR "installed provider-host packaged no lib/execve.node (${rc}): ${err}")
  endif()
  if(NOT EXISTS ${prefix}/pkg/bin/ph-sandbox-helper)
    message(FATAL_ERROR "installed provider-host packaged no bin/ph-sandbox-helper")
  endif()
endif()
# The man page and the bash completion.
foreach(f share/man/man1/provider-host.1 share/bash-completion/completions/provider-host)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "${f} was not installed")
  endif()
endforeach()
file(REMOVE_RECURSE ${prefix})
message(STATUS "install layout ok")
