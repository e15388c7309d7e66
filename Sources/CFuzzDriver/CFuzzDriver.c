/* Declarations only (include/CFuzzDriver.h): libFuzzer provides the function. */
#include "CFuzzDriver.h"
