/* Profiling of the autograd engine's backward nodes (vtl.profiler): while on, each node's
   backward is timed (after waiting for the devices' queued work when sync is set, so the time
   is the node's own GPU work) and summed per node name. */
#ifndef VTL_PROFILE_H
#define VTL_PROFILE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
  const char *name;
  int64_t calls;
  double seconds;
} vtl_profile_entry;

/* starts (clearing what was summed) or stops the timing of backward nodes */
void vtl_profile_set(bool on, bool sync);
bool vtl_profile_on(void);
/* the clock in seconds, after waiting for every device's queued work when sync is set */
double vtl_profile_mark(void);
/* adds one call of `name` (a string that outlives the profile: node names are literals) */
void vtl_profile_add(const char *name, double seconds);
/* the sums so far: *n entries (valid until the next vtl_profile_set), and their total seconds */
const vtl_profile_entry *vtl_profile_entries(int *n, double *total);

#endif
