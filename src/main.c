#include <stdio.h>

int main(void)
{
    printf("nexo %s\n", NEXO_VERSION);
    return 0;
}
