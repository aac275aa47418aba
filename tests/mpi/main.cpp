// Catch2 main of the MPI test binary (run as `mpirun -np 4 parallax_mpi_tests`): initialises MPI, runs the
// same tests on every rank, and makes every process exit non-zero when any rank had a failure.
//
// Only rank 0 reports through Catch's normal output. The other ranks write theirs to a temporary file that
// is printed (to stderr, after the run) only by a rank that failed, so a failure on rank 3 is not silent.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "parallax/comm/mpi_communicator.hpp"

int main(int argc, char* argv[]) {
  parallax::MpiEnvironment mpi(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  Catch::Session session;
  int rc = session.applyCommandLine(argc, argv);  // the same arguments on every rank, so the same outcome
  if (rc != 0) return rc;
  if (session.configData().showHelp || session.configData().listTests || session.configData().listTags) {
    if (rank != 0) return 0;
    return session.run();
  }

  std::filesystem::path log;
  if (rank != 0) {
    log = std::filesystem::temp_directory_path() / ("parallax_mpi_tests." + std::to_string(::getpid()) + ".log");
    session.configData().outputFilename = log.string();
  }
  const int failed = session.run();

  int failed_ranks = 0;
  const int mine = failed != 0 ? 1 : 0;
  MPI_Allreduce(&mine, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank != 0) {
    if (failed != 0) {
      std::ifstream in(log);
      std::ostringstream text;
      text << in.rdbuf();
      std::cerr << "---- rank " << rank << " of " << size << ": " << failed << " failed test case(s) ----\n"
                << text.str() << std::flush;
    }
    std::error_code ignored;
    std::filesystem::remove(log, ignored);
  }
  if (rank == 0 && failed_ranks != 0)
    std::cerr << "parallax_mpi_tests: failures on " << failed_ranks << " of " << size << " ranks\n";
  return failed_ranks != 0 ? 1 : 0;
}
