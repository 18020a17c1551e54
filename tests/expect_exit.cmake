# Runs CMD with ARGS and checks its exit code (EXPECT_CODE) and that stderr contains
# EXPECT_STDERR while stdout stays empty (an error never writes half a result).
execute_process(COMMAND ${CMD} ${ARGS} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT code EQUAL EXPECT_CODE)
  message(FATAL_ERROR "exit code ${code}, expected ${EXPECT_CODE}; stderr: ${err}")
endif()
string(FIND "${err}" "${EXPECT_STDERR}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "stderr lacks '${EXPECT_STDERR}': ${err}")
endif()
if(NOT out STREQUAL "")
  message(FATAL_ERROR "stdout should be empty on error, got: ${out}")
endif()
