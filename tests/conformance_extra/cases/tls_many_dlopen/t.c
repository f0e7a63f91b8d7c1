__thread long arr[64] = { N * 1000 + 1, N * 1000 + 2 };
__thread char tag[16] = "tag";
long tget(int k) { arr[k] += 1; return arr[k] + (tag[0] == 't'); }
