module tcpdemo/loadgen

go 1.19
