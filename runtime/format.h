#ifndef VTL_FORMAT_H
#define VTL_FORMAT_H
#include "core.h"
/* PyTorch-style text of a tensor with its shape and dtype; malloc'd, NULL when out of memory. */
char *vtl_tensor_format(const vtl_tensor *t);
#endif
