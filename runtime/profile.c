/* Sums of backward-node times for vtl.profiler (runtime/profile.h). Node names are string
   literals, so entries are found by pointer first and by content after. */
#include <stdlib.h>
#include <string.h>
#include "profile.h"
#include "backend.h"
#include "core.h"

static bool prof_on, prof_sync;
static vtl_profile_entry *entries;
static int n_entries, cap_entries;
static double total_seconds;

void vtl_profile_set(bool on, bool sync) {
  prof_on = on;
  prof_sync = sync;
  if (on) {
    n_entries = 0;
    total_seconds = 0;
  }
}

bool vtl_profile_on(void) { return prof_on; }

double vtl_profile_mark(void) {
  if (prof_sync) {
    const vtl_backend *be = vtl_backend_of_type(VTL_CUDA);
    int n = be && be->device_count ? be->device_count() : 0;
    for (int d = 0; d < n; d++) be->synchronize(d); /* a failure shows up at the next op */
  }
  return vtl_clock();
}

void vtl_profile_add(const char *name, double seconds) {
  total_seconds += seconds;
  for (int i = 0; i < n_entries; i++) {
    if (entries[i].name == name || strcmp(entries[i].name, name) == 0) {
      entries[i].calls++;
      entries[i].seconds += seconds;
      return;
    }
  }
  if (n_entries == cap_entries) {
    int cap = cap_entries ? 2 * cap_entries : 64;
    vtl_profile_entry *e = realloc(entries, sizeof *e * (size_t)cap);
    if (!e) return; /* out of memory: this name goes uncounted */
    entries = e;
    cap_entries = cap;
  }
  entries[n_entries++] = (vtl_profile_entry){name, 1, seconds};
}

const vtl_profile_entry *vtl_profile_entries(int *n, double *total) {
  *n = n_entries;
  *total = total_seconds;
  return entries;
}
