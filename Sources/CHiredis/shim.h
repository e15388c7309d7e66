#ifndef BROKERKIT_CHIREDIS_SHIM_H
#define BROKERKIT_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#endif
